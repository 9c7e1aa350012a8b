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
    threads: config["threads"]
    params:
        code=code_version("evaluate"),
        attack=lambda wc: as_json(config["attacks"][wc.attack]),
        tags=eval_tags,
        device=config["device"],
        workers=config["workers"],
    shell:
        "python -m robustcore evaluate --model {input.model} --data results/data/{wildcards.dataset} "
        "--attack {params.attack:q} --tags {params.tags:q} --cost {input.cost} --seed {wildcards.seed} "
        "--device {params.device:q} --threads {threads} --workers {params.workers} "
        "--out {output.summary} > {log} 2>&1"
