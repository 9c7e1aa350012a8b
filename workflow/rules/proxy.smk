rule train_proxy:
    input:
        data_files("{dataset}"),
    output:
        model="results/proxy/{dataset}/{proxy}/seed{seed}/model.pt",
        spec="results/proxy/{dataset}/{proxy}/seed{seed}/model.json",
        log_csv="results/proxy/{dataset}/{proxy}/seed{seed}/log.csv",
        cost="results/proxy/{dataset}/{proxy}/seed{seed}/cost.json",
        dynamics=directory("results/proxy/{dataset}/{proxy}/seed{seed}/dynamics"),
    log:
        "logs/train_proxy/{dataset}/{proxy}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/train_proxy/{dataset}/{proxy}/seed{seed}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    params:
        model=lambda wc: as_json(config["models"][config["proxies"][wc.proxy]["model"]]),
        training=lambda wc: as_json(proxy_training(wc.proxy)),
        device=config["device"],
    shell:
        "python -m robustcore proxy --data results/data/{wildcards.dataset} --model {params.model:q} "
        "--training {params.training:q} --seed {wildcards.seed} --device {params.device:q} "
        "--threads {threads} --out results/proxy/{wildcards.dataset}/{wildcards.proxy}/seed{wildcards.seed} "
        "> {log} 2>&1"
