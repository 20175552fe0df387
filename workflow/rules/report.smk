rule collect_results:
    """All tidy result files of the study in one table (one row per run x metric), their per-example
    predictions in another, and the paired (McNemar) tests of every bridge run against its controls."""
    input:
        results=lambda w: result_inputs(),  # ancient() unless rewritten now; their requests are in params
        predictions=lambda w: prediction_inputs(),
    output:
        table="results/results.csv",
        metrics="results/metrics.json",
        predictions="results/predictions.csv",
        paired_tests="results/paired_tests.csv",
    params:
        spec=lambda w: results_request(),
        code=code("collect"),
    log:
        "logs/collect_results.log",
    shell:
        "{CLI} collect --out {output.table} --metrics {output.metrics} --predictions {output.predictions} "
        "--paired-tests {output.paired_tests} {input.results} > {log} 2>&1"


def report_spec():
    """What the tables select by: the study section, and the k-shot (and relay) seeds it planned."""
    return spec(study=study_plan.study_view(config), few_shot_seeds=config["few_shot"]["seeds"])


rule report:
    """Every table and figure of the study from the tidy results, in one job (each is one function of
    report.py named after its file)."""
    input:
        results=lambda w: unless_rerun("results/results.csv", results_request()),  # what decides it is in params
        paired_tests=lambda w: unless_rerun("results/paired_tests.csv", results_request()),  # the paired-test notes
    output:
        study_plan.report_outputs(config),
    params:
        names=sum(study_plan.study_reports(config), []),
        spec=lambda w: report_spec(),
        results=lambda w: results_request(),
        code=code("report") + code("collect"),
    log:
        "logs/report/report.log",
    shell:
        "{CLI} report {params.names} --results {input.results} --spec {params.spec:q} --out-dir figures > {log} 2>&1"


rule figures_readme:
    """figures/README.md: every output with the config fingerprint and the commit that produced it.
    Also removes the top-level files of figures/ that the current config does not produce (an earlier
    config's tables); subfolders (other studies' figures) are left alone."""
    input:
        # ancient unless the report writing them reruns now (its spec or code changed): then so must this
        figures=lambda w: [unless_rerun(f, producer_params(f)["spec"]) for f in study_plan.study_figures(config)],
        # Current unless a result's request changed (then the report reruns and so must this; Snakemake does
        # not rerun a job behind ancient inputs on a params change upstream).
        results=lambda w: unless_rerun("results/results.csv", results_request()),
    output:
        "figures/README.md",
    params:
        spec=lambda w: spec(config_fingerprint=config_fingerprint()),
        results=lambda w: results_request(),
        # the other studies' figures are listed by name (params), not read: `figures_latentwire` builds this
        # without running studies 2 and 3, and whichever target ran last, it is the same file
        others=lambda w: kv_alignment_plan.figures(config) + dense_kv_plan.figures(config),
        code=code("figures-readme") + code("report") + code("soft-token-neighbours"),
    log:
        "logs/report/README.log",
    shell:
        "{CLI} figures-readme --prune --spec {params.spec:q} --out {output} {input.figures} {params.others} > {log} 2>&1"


rule figures_latentwire:
    """The LatentWire study: every table and figure its config asks for, and figures/README.md (which
    names the other studies' figures without running those studies)."""
    input:
        study_plan.study_figures(config),
        "figures/README.md",


rule figures:
    """Every study's figures: LatentWire, K-V cache alignment and dense KV transfer (each when configured)."""
    input:
        rules.figures_latentwire.input,
        kv_alignment_plan.figures(config),
        dense_kv_plan.figures(config),
