rule train_proxy:
    input:
        data_files("{dataset}"),
    output:
        model="results/proxy/{dataset}/{proxy}/seed{seed}/model.pt",
        spec="results/proxy/{dataset}/{proxy}/seed{seed}/model.json",
        log_csv="results/proxy/{dataset}/{proxy}/seed{seed}/log.csv",
        cost="results/proxy/{dataset}/{proxy}/seed{seed}/cost.json",
        dynamics=directory("results/proxy/{dataset}/{proxy}/seed{seed}/dynamics"),
        probe="results/proxy/{dataset}/{proxy}/seed{seed}/probe.npz",
    log:
        "logs/train_proxy/{dataset}/{proxy}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/train_proxy/{dataset}/{proxy}/seed{seed}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: job_threads("train_proxy")
    resources:
        runtime=job_runtime("train_proxy"),
        mem_mb=job_mem_mb("train_proxy"),
        gpu=job_gpus("train_proxy"),
        tasks=job_tasks("train_proxy"),
        tasks_per_gpu=multi_gpu("train_proxy", lambda world, wildcards: 1),
        nodes=job_nodes("train_proxy"),
        mpi=multi_gpu("train_proxy", lambda world, wildcards: "srun"),
    params:
        code=code_version("proxy"),
        launch=launcher("train_proxy"),
        model=lambda wc: as_json(config["models"][config["proxies"][wc.proxy]["model"]]),
        training=lambda wc: as_json(proxy_training(wc.proxy)),
        device=config["device"],
        workers=config["workers"],
        torch_threads=torch_threads,
    shell:
        "{params.launch}python -m robustcore proxy --data results/data/{wildcards.dataset} --model {params.model:q} "
        "--training {params.training:q} --seed {wildcards.seed} --device {params.device:q} "
        "--threads {params.torch_threads} --workers {params.workers} --out results/proxy/{wildcards.dataset}/{wildcards.proxy}/seed{wildcards.seed} "
        "> {log} 2>&1"


rule sparse_fgsm:
    input:
        data=data_files("{dataset}"),
        model="results/proxy/{dataset}/{proxy}/seed{seed}/model.pt",
    output:
        table="results/proxy/{dataset}/{proxy}/seed{seed}/sparse_fgsm.parquet",
        info="results/proxy/{dataset}/{proxy}/seed{seed}/sparse_fgsm.json",
    log:
        "logs/sparse_fgsm/{dataset}/{proxy}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/sparse_fgsm/{dataset}/{proxy}/seed{seed}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: job_threads("sparse_fgsm")
    resources:
        runtime=job_runtime("sparse_fgsm"),
        mem_mb=job_mem_mb("sparse_fgsm"),
        gpu=job_gpus("sparse_fgsm"),
    params:
        code=code_version("sensitivity"),
        sparse=lambda wc: as_json(config["proxies"][wc.proxy]["sparse_fgsm"]),
        device=config["device"],
    shell:
        "python -m robustcore sensitivity --proxy results/proxy/{wildcards.dataset}/{wildcards.proxy}/seed{wildcards.seed} "
        "--data results/data/{wildcards.dataset} --params {params.sparse:q} --seed {wildcards.seed} "
        "--device {params.device:q} --threads {threads} --out {output.table} > {log} 2>&1"
