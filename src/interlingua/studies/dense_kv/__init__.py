"""Study 3: dense heterogeneous KV transfer ("See What I See, Know What I Think"), across tokenizers.

    data.py      a task split as the study reads it: sender cache rows, token alignment, receiver prompts
    configs.py   DenseRunConfig: one direction's two-phase training
    train.py     phase 1 (reconstruction, closed form) and phase 2 (generation) of one direction
    evaluate.py  accuracy with the transferred cache, context-unaware and context-aware, with controls
"""
