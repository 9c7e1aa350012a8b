rule score_samples:
    input:
        unpack(score_inputs),
    output:
        scores="results/scores/{dataset}/{proxy}/seed{seed}/{method}.parquet",
        info="results/scores/{dataset}/{proxy}/seed{seed}/{method}.json",
    log:
        "logs/score_samples/{dataset}/{proxy}/seed{seed}/{method}.log",
    benchmark:
        "logs/benchmarks/score_samples/{dataset}/{proxy}/seed{seed}/{method}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: job_threads("score_samples")
    resources:
        runtime=job_runtime("score_samples"),
        mem_mb=job_mem_mb("score_samples"),
        gpu=job_gpus("score_samples"),
    params:
        code=code_version("score"),
        score=lambda wc: as_json(config["scores"][wc.method]),
        device=config["device"],
    shell:
        "python -m robustcore score --proxy results/proxy/{wildcards.dataset}/{wildcards.proxy}/seed{wildcards.seed} "
        "--data results/data/{wildcards.dataset} --params {params.score:q} --seed {wildcards.seed} "
        "--device {params.device:q} --threads {threads} --out {output.scores} > {log} 2>&1"
