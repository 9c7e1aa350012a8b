rule select_coreset:
    input:
        data=data_files("{dataset}"),
        scores=coreset_scores,
    output:
        coreset="results/coresets/{dataset}/{coreset}.parquet",
        info="results/coresets/{dataset}/{coreset}.json",
    log:
        "logs/select_coreset/{dataset}/{coreset}.log",
    conda:
        "../../envs/torch.yaml"
    params:
        code=code_version("coreset"),
        selection=lambda wc: as_json(coreset_params(wc)),
        fraction=lambda wc: parse_coreset(wc.coreset)["fraction"],
        seed=lambda wc: parse_coreset(wc.coreset)["seed"] or 0,
        scores=lambda wc, input: f"--scores {input.scores}" if input.scores else "",
    shell:
        "python -m robustcore coreset --data results/data/{wildcards.dataset} {params.scores} "
        "--params {params.selection:q} --fraction {params.fraction} --seed {params.seed} "
        "--out {output.coreset} > {log} 2>&1"


rule all_coresets:
    input:
        study_coresets,
