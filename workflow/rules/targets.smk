# One target per pipeline stage: `snakemake --cores all <stage>`; dvc.yaml runs them in order.


rule models:
    input:
        # study 1's models, study 2's zoo members and study 3's directions' (a `continued` model is trained here)
        expand("data/models/{model}", model=sorted(set(study_models()) | kv_zoo_models() | {
            m for d in dense_kv_plan.directions(config).values() for m in (d["sender"], d["receiver"])})),


rule tasks:
    input:
        study_splits(),


rule activations:
    input:
        study_stores(),


rule checkpoints:
    input:
        study_checkpoints(),


rule evaluations:
    input:
        "results/results.csv",
        "results/paired_tests.csv",
