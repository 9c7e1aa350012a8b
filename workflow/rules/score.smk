rule score_samples:
    input:
        dynamics="results/proxy/{dataset}/{proxy}/seed{seed}/dynamics",
    output:
        scores="results/scores/{dataset}/{proxy}/seed{seed}/{method}.parquet",
        info="results/scores/{dataset}/{proxy}/seed{seed}/{method}.json",
    log:
        "logs/score_samples/{dataset}/{proxy}/seed{seed}/{method}.log",
    conda:
        "../../envs/torch.yaml"
    params:
        score=lambda wc: as_json(config["scores"][wc.method]),
    shell:
        "python -m robustcore score --proxy results/proxy/{wildcards.dataset}/{wildcards.proxy}/seed{wildcards.seed} "
        "--params {params.score:q} --out {output.scores} > {log} 2>&1"
