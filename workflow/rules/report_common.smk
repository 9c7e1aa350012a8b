# Functions of the report rules (report.smk includes this file; rule files hold rules only).
# The HTML report (`snakemake --report report.html`): the landing page is workflow/report/
# workflow.rst (what was run, and the claims table results/report/claims.html); the sidebar lists
# one category per paper (numbered in config order: the report sorts categories by name) with a
# subcategory per study. Tables are registered as HTML, which the report shows inline.


def paper_short(study):
    """A study's paper as the report names it: its `paper` up to the parenthesis."""
    return (study.get("paper") or "Other studies").split(" (")[0]


def report_categories():
    """Study -> report category: '<n> · <paper>', n in the order papers first appear."""
    papers = list(dict.fromkeys(paper_short(s) for s in config["studies"].values()))
    number = {paper: f"{i} · {paper}" for i, paper in enumerate(papers, start=1)}
    return {name: number[paper_short(s)] for name, s in config["studies"].items()}


def report_category(wildcards):
    """The report category (paper) of a study's outputs."""
    return report_categories()[wildcards.study]


# What each registered file is, by file name. The report lists a study's items by these labels;
# searching it matches paths only. Labels other than the first must each tell the files apart
# exactly as their names do: the report turns a label with two values, each on half of the
# listed results, into a toggle, and then fails (a blank page) when a listed row has no result
# under the toggle's value; two such labels switch toggles off. So `item` is one-to-one with
# `file`, and `study` comes first.
REPORT_ITEMS = {
    "accuracy.html": "Table · accuracy, comparisons",
    "compute.html": "Table · compute",
    "accuracy_vs_fraction.png": "Figure · accuracy vs fraction",
    "clean_vs_robust.png": "Figure · clean vs robust",
    "robust_vs_compute.png": "Figure · robust vs compute",
    "top_vs_bottom.png": "Sparse FGSM Fig. 1 · top vs bottom",
    "hardness_examples.png": "EasyCore Fig. 1 · easiest, hardest",
    "hardness_distribution.png": "EasyCore Fig. 2 · AIGN distribution",
    "proxy_agreement.png": "EasyCore Fig. 3 · proxy agreement",
    "proxy_agreement.html": "Table · numbers of Fig. 3",
    "decision_boundary.png": "EasyCore Fig. 4 · decision boundary",
    "feature_projection.png": "EasyCore Fig. 5 · features",
    "easy_hard_accuracy.png": "EasyCore Fig. 6 · by test hardness",
    "easy_hard_accuracy.html": "Table · numbers of Fig. 6",
    "sparse_fgsm_signal.png": "Figure · Sparse FGSM flips",
    "sparse_fgsm_signal.html": "Table · Sparse FGSM flips",
}
if len(set(REPORT_ITEMS.values())) != len(REPORT_ITEMS):
    raise ValueError("REPORT_ITEMS: two files share an item label")


def report_labels(file):
    """The labels of a study's registered file: study, what it is, file name."""
    return {"study": "{study}", "item": REPORT_ITEMS[file], "file": file}


class ReportParam(str):
    """A rule param holding JSON that the HTML report lists by a short name.

    The report's info panel shows each param formatted plainly (`format(value)`): a study's JSON
    would be kilobytes of escaped text there. A shell command takes the JSON with the `json`
    format spec, `{params.study:jsonq}` (JSON, shell-quoted); the value, and so the job's
    staleness, is the JSON.
    """

    def __new__(cls, text, name):
        param = super().__new__(cls, text)
        param.name = name
        return param

    def __format__(self, spec):
        return str.__str__(self) if spec == "json" else format(self.name, spec)


def study_param(wildcards):
    """The study entry for the report jobs (JSON), listed as the study's name."""
    return ReportParam(study_json(wildcards), wildcards.study)


def figure_param(params, kind):
    """A figure job's params (JSON, config order), listed as '<kind> of <study>'."""
    return lambda wc: ReportParam(ordered_json(params(wc)), f"{kind} of {wc.study}")


def index_studies():
    """Every study as the index reads it, with its report category (for the links)."""
    studies = json.loads(report_studies())
    categories = report_categories()
    for name, study in studies.items():
        study["category"] = categories[name]
    return ReportParam(ordered_json(studies), f"{len(studies)} studies")
