# Study 2, K-V cache alignment (Dery et al.): pool corpus -> pre-trained members -> translator runs -> report.
# What runs is planned by interlingua/studies/kv_alignment/plan.py from the `kv_alignment` config section.
from interlingua.studies.kv_alignment import plan as kv_plan
from interlingua.studies.kv_alignment.corpus import CORPORA

KV = config.get("kv_alignment") or {}


def kv_corpus_files():
    root = Path(config["paths"]["datasets"])
    names = KV.get("corpus", {}).get("corpora", list(CORPORA))
    return [str(root / f) for n in names for f in CORPORA[n][0]]


def kv_corpus_request():
    missing = [f for f in kv_corpus_files() if not Path(f).is_file()]
    if missing:
        raise WorkflowError(f"interlingua: kv_alignment corpus file(s) missing from the datasets mirror: {missing}")
    return {"corpus": KV.get("corpus", {}), "tokenizer": model_request(KV["tokenizer"]), "code": code("pool-corpus"),
            "files": {f: file_sha256(f) for f in kv_corpus_files()}}


def kv_member_request(name):
    """What decides a pre-trained member: its recipe, its parent's request, the corpus, the code."""
    member = KV["members"][name]
    parent = member.get("parent")
    return {"pretrain": member["pretrain"], "parent": kv_member_request(parent) if parent else None,
            "corpus": kv_corpus_request(), "code": code("pool-pretrain")}


def kv_ref_request(ref):
    name = ref.partition("@")[0]
    member = KV["members"][name]
    if "model" in member:
        return {"model": model_request(member["model"])}
    return {"member": kv_member_request(name), "ref": ref}


def kv_ref_input(ref):
    name = ref.partition("@")[0]
    member = KV["members"][name]
    if "model" in member:
        return model_input(member["model"])
    # a snapshot (name@STEP) lies in its run's snapshots directory output
    path = f"{kv_plan.SNAPSHOTS_DIR}/{name}" if "@" in ref else kv_plan.member_dir(config, ref)
    return unless_rerun(path, spec(request=kv_member_request(name)))


def kv_run_request(run, seed):
    real, plan = kv_plan.resolve(config, run)
    request = {"run": real, "plan": plan, "seed": int(seed), "code": code("kv-align"),
               "members": {n: kv_ref_request(r) for n, r in plan["members"].items()}, "corpus": kv_corpus_request()}
    if plan.get("start_from"):
        request["start_from"] = kv_run_request(plan["start_from"], plan["seeds"][0])
    return request


def kv_run_inputs(w):
    _, plan = kv_plan.resolve(config, w.run)
    inputs = {n: kv_ref_input(r) for n, r in plan["members"].items()}
    inputs["corpus"] = unless_rerun("data/kv_alignment/corpus", spec(request=kv_corpus_request()))
    inputs["tokenizer"] = model_input(KV["tokenizer"])
    if plan.get("start_from"):
        seed = plan["seeds"][0]
        inputs["start_from"] = unless_rerun(f"{kv_plan.RUNS_DIR}/{plan['start_from']}/seed{seed}",
                                            spec(request=kv_run_request(plan["start_from"], seed)))
    return inputs


def kv_member_inputs(w):
    inputs = {"corpus": unless_rerun("data/kv_alignment/corpus", spec(request=kv_corpus_request()))}
    parent = KV["members"][w.member].get("parent")
    if parent:
        inputs["parent"] = kv_ref_input(parent)
    return inputs


def kv_snapshot_args(w):
    steps = KV["members"][w.member]["pretrain"].get("snapshots", [])
    return " ".join(f"--snapshot {s}={kv_plan.SNAPSHOTS_DIR}/{w.member}/step{s}" for s in steps)


rule kv_pool_corpus:
    """The pool's text tokenized with the shared tokenizer, split (held-out documents), pool vocabulary."""
    input:
        files=ancient(kv_corpus_files()),  # their content hashes are in params
        tokenizer=lambda w: model_input(KV["tokenizer"]),
    output:
        directory("data/kv_alignment/corpus"),
    params:
        spec=lambda w: spec(request=kv_corpus_request()),
        code=code("pool-corpus"),  # also inside the request
        corpus=lambda w: json.dumps(KV.get("corpus", {})),
        datasets=config["paths"]["datasets"],
    log:
        "logs/kv_alignment/corpus.log",
    shell:
        "{CLI} pool-corpus --model-dir {input.tokenizer} --datasets {params.datasets} --config {params.corpus:q} "
        "--out {output} > {log} 2>&1"


rule kv_pretrain_member:
    """Pre-train one small pool member (resumable; an expert continues from its parent), with its loss
    curve and held-out NLL against a unigram model; snapshots (mid checkpoints) beside it."""
    input:
        unpack(kv_member_inputs),
    wildcard_constraints:
        member=ALIAS,
    output:
        member=directory(f"{kv_plan.MEMBERS_DIR}/{{member}}"),
        snapshots=directory(f"{kv_plan.SNAPSHOTS_DIR}/{{member}}"),
    params:
        spec=lambda w: spec(request=kv_member_request(w.member)),
        code=code("pool-pretrain"),  # also inside the request
        config=lambda w: json.dumps(KV["members"][w.member]["pretrain"]),
        parent=lambda w, input: f"--parent {input.parent}" if "parent" in input.keys() else "",
        snapshots=kv_snapshot_args,
    threads: 1  # small models: one thread each, two jobs side by side (5-12x faster than 2 threads here)
    log:
        "logs/kv_alignment/pretrain/{member}.log",
    benchmark:
        "results/benchmarks/kv_pretrain/{member}.tsv"
    shell:
        "mkdir -p {output.snapshots} && {CLI} pool-pretrain --threads {threads} --config {params.config:q} "
        "--corpus {input.corpus} --out {output.member} {params.parent} {params.snapshots} > {log} 2>&1"


rule kv_align:
    """Train (or fit) a translator over a pool and score every path with its controls over training."""
    input:
        unpack(kv_run_inputs),
    wildcard_constraints:
        run=ALIAS,
    output:
        directory(f"{kv_plan.RUNS_DIR}/{{run}}/seed{{seed}}"),
    params:
        spec=lambda w: spec(request=kv_run_request(w.run, w.seed)),
        code=code("kv-align"),  # also inside the request
        plan=lambda w: json.dumps(kv_plan.resolve(config, w.run)[1]),
        members=lambda w: " ".join(f"{n}={kv_plan.member_dir(config, r)}"
                                   for n, r in kv_plan.resolve(config, w.run)[1]["members"].items()),
        start=lambda w, input: f"--start-from {input.start_from}/translator.pt" if "start_from" in input.keys() else "",
    threads: 1
    log:
        "logs/kv_alignment/align/{run}/seed{seed}.log",
    benchmark:
        "results/benchmarks/kv_align/{run}/seed{seed}.tsv"
    shell:
        "{CLI} kv-align --threads {threads} --plan {params.plan:q} --seed {wildcards.seed} --corpus {input.corpus} "
        "--tokenizer-dir {input.tokenizer} --out {output} {params.start} {params.members} > {log} 2>&1"


def kv_portability_request():
    job = kv_plan.portability(config)
    return {"job": job, "code": code("kv-portability"), "members": {n: kv_ref_request(r) for n, r in job["members"].items()},
            "translator": kv_run_request(job["translator_run"], job["seed"]), "corpus": kv_corpus_request()}


def kv_portability_inputs(w):
    job = kv_plan.portability(config)
    inputs = {n: kv_ref_input(r) for n, r in job["members"].items()}
    inputs["corpus"] = unless_rerun("data/kv_alignment/corpus", spec(request=kv_corpus_request()))
    inputs["tokenizer"] = model_input(KV["tokenizer"])
    run_dir = f"{kv_plan.RUNS_DIR}/{job['translator_run']}/seed{job['seed']}"
    inputs["run"] = unless_rerun(run_dir, spec(request=kv_run_request(job["translator_run"], job["seed"])))
    return inputs


rule kv_portability:
    """Figure 5: soft prompts tuned on member A, ported A -> S -> B, scored by B on held-out completions,
    with the adapters as trained and after meta-training them on the meta-train prompts."""
    input:
        unpack(kv_portability_inputs),
    output:
        directory(kv_plan.PORTABILITY_DIR),
    params:
        spec=lambda w: spec(request=kv_portability_request()),
        code=code("kv-portability"),  # also inside the request
        config=lambda w: json.dumps(kv_plan.portability(config)["config"]),
        seed=lambda w: kv_plan.portability(config)["seed"],
        members=lambda w: " ".join(f"{n}={kv_plan.member_dir(config, r)}"
                                   for n, r in kv_plan.portability(config)["members"].items()),
    threads: 1
    log:
        "logs/kv_alignment/portability.log",
    benchmark:
        "results/benchmarks/kv_portability.tsv"
    shell:
        "{CLI} kv-portability --threads {threads} --config {params.config:q} --translator {input.run}/translator.pt "
        "--seed {params.seed} --corpus {input.corpus} --tokenizer-dir {input.tokenizer} --out {output} "
        "{params.members} > {log} 2>&1"


def kv_report_inputs(w):
    inputs = {"runs": [unless_rerun(d, spec(request=kv_run_request(d.split("/")[-2], d.split("seed")[-1])))
                       for d in kv_plan.run_dirs(config)],
              "members": [kv_ref_input(n) for n in kv_plan.pretrained_members(config)]}
    if kv_plan.portability(config):
        inputs["portability"] = unless_rerun(kv_plan.PORTABILITY_DIR, spec(request=kv_portability_request()))
    return inputs


rule kv_report:
    """Every table and figure of the K-V alignment study from its runs and members."""
    input:
        unpack(kv_report_inputs),
    output:
        kv_plan.figures(config),
    params:
        spec=lambda w: spec(kv_alignment=KV),
        code=code("kv-report"),
        runs=lambda w: [kv_run_request(d.split("/")[-2], d.split("seed")[-1]) for d in kv_plan.run_dirs(config)],
    log:
        "logs/kv_alignment/report.log",
    shell:
        "{CLI} kv-report --spec {params.spec:q} --out-dir {kv_plan.FIGURES_DIR} > {log} 2>&1"


rule kv_alignment_runs:
    """Every trained member, translator run and the portability job (what DVC's kv_alignment stage caches;
    the report belongs to the figures stage)."""
    input:
        kv_plan.run_dirs(config),
        [kv_plan.PORTABILITY_DIR] if kv_plan.portability(config) else [],


rule figures_kv_alignment:
    """The K-V cache alignment study: every table and figure its config asks for."""
    input:
        kv_plan.figures(config),
