rule evaluate_model:
    input:
        data=data_files("{dataset}"),
        model="results/runs/{dataset}/{model}/{regime}/{coreset}/seed{seed}/model.pt",
        cost="results/runs/{dataset}/{model}/{regime}/{coreset}/seed{seed}/cost.json",
    output:
        summary="results/eval/{dataset}/{model}/{regime}/{coreset}/seed{seed}/{attack}.json",
        per_sample="results/eval/{dataset}/{model}/{regime}/{coreset}/seed{seed}/{attack}.parquet",
    log:
        "logs/evaluate_model/{dataset}/{model}/{regime}/{coreset}/seed{seed}/{attack}.log",
    benchmark:
        "logs/benchmarks/evaluate_model/{dataset}/{model}/{regime}/{coreset}/seed{seed}/{attack}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: job_threads("evaluate_model")
    resources:
        runtime=job_runtime("evaluate_model"),
        mem_mb=job_mem_mb("evaluate_model"),
        gpu=job_gpus("evaluate_model"),
        tasks=job_tasks("evaluate_model"),
        tasks_per_gpu=multi_gpu("evaluate_model", lambda world, wildcards: 1),
        nodes=job_nodes("evaluate_model"),
        mpi=multi_gpu("evaluate_model", lambda world, wildcards: "srun"),
    params:
        code=code_version("evaluate"),
        launch=launcher("evaluate_model"),
        attack=lambda wc: as_json(without_gpus(config["attacks"][wc.attack])),
        tags=eval_tags,
        device=config["device"],
        workers=config["workers"],
        torch_threads=torch_threads,
    shell:
        "{params.launch}python -m robustcore evaluate --model {input.model} --data results/data/{wildcards.dataset} "
        "--attack {params.attack:q} --tags {params.tags:q} --cost {input.cost} --seed {wildcards.seed} "
        "--device {params.device:q} --threads {params.torch_threads} --workers {params.workers} "
        "--out {output.summary} > {log} 2>&1"
