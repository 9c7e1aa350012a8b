# robustcore: which training samples to keep, and how to train on them, for robustness at less compute.
# Stages live in workflow/rules/<stage>.smk; all logic is in the robustcore package (src/).

from snakemake.utils import min_version

min_version("8.0")


# The HTML report's landing page (`snakemake --report report.html`): what was run, and the claims.
report: "workflow/report/workflow.rst"


# A preset given with --configfile replaces the default config instead of merging into it.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/validate.smk"
include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/proxy.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/coreset.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Downloads (compute nodes often have no internet) and jobs of seconds run where Snakemake runs;
# on a cluster only model training, scoring and evaluation are submitted, and the one-off decode
# of an image folder (prepare_shards, many CPUs).
localrules:
    all,
    all_coresets,
    prepare_data,
    prepare_folder,
    select_coreset,
    report_study,
    report_compute,
    report_index,
    plot_top_vs_bottom,
    plot_hardness,
    plot_proxy_agreement,
    plot_decision_boundary,
    plot_easy_hard_accuracy,


rule all:
    default_target: True
    input:
        "results/report/index.md",
