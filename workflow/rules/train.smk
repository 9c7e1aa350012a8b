rule train_model:
    input:
        data=data_files("{dataset}"),
        coreset="results/coresets/{dataset}/{coreset}.parquet",
    output:
        model="results/runs/{dataset}/{model}/{regime}/{coreset}/seed{seed}/model.pt",
        spec="results/runs/{dataset}/{model}/{regime}/{coreset}/seed{seed}/model.json",
        log_csv="results/runs/{dataset}/{model}/{regime}/{coreset}/seed{seed}/log.csv",
        cost="results/runs/{dataset}/{model}/{regime}/{coreset}/seed{seed}/cost.json",
    log:
        "logs/train_model/{dataset}/{model}/{regime}/{coreset}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/train_model/{dataset}/{model}/{regime}/{coreset}/seed{seed}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: job_threads("train_model")
    resources:
        runtime=job_runtime("train_model"),
        mem_mb=job_mem_mb("train_model"),
        gpu=job_gpus("train_model"),
        tasks=job_tasks("train_model"),
        tasks_per_gpu=multi_gpu("train_model", lambda world, wildcards: 1),
        nodes=job_nodes("train_model"),
        mpi=multi_gpu("train_model", lambda world, wildcards: "srun"),
    params:
        code=code_version("train"),
        launch=launcher("train_model"),
        model=lambda wc: as_json(config["models"][wc.model]),
        regime=lambda wc: as_json(without_gpus(config["regimes"][wc.regime])),
        device=config["device"],
        workers=config["workers"],
        torch_threads=torch_threads,
    shell:
        "{params.launch}python -m robustcore train --data results/data/{wildcards.dataset} --coreset {input.coreset} "
        "--model {params.model:q} --regime {params.regime:q} --seed {wildcards.seed} "
        "--device {params.device:q} --threads {params.torch_threads} --workers {params.workers} "
        "--out results/runs/{wildcards.dataset}/{wildcards.model}/{wildcards.regime}/{wildcards.coreset}/seed{wildcards.seed} "
        "> {log} 2>&1"
