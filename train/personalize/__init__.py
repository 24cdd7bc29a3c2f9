"""`merlb personalize`: retrain on the streamer's own past streams, safely.

    merlb personalize                       # every session log whose recording is still on disk
    merlb personalize ~/Videos/*.mkv --labels fixes.csv
    merlb personalize review ~/Videos       # counts per label + contact sheet, no training
    merlb personalize list | rollback [VERSION] | activate VERSION [--force]

Data (windows.py). An OBS recording and its session log (obs_merlb/session.py, named
`<recording stem>.merlb.jsonl`) pair up by name, or explicitly with
`--pair REC=LOG`. Each `tag` event at stream time t labels the window
[t - before, t + after] of the recording (streamers press the hotkey just
after the moment). Tag names map to emotion/valence/arousal through a table
(`[personalize.tags]` in config.toml over the defaults; emotion names
and their aliases map to themselves, behaviour names to the behaviour head);
any other name becomes a class of a new `user` head, so "tilted" or "clutch"
are learnt as the streamer's own classes. A labels CSV (`path,start,end,label`)
adds windows or corrects tags it overlaps (`ignore` deletes them). Optionally,
confident predictions of the current model on untagged stretches become
pseudo-labels with a small weight. Tags seen fewer than `--min-examples`
times are listed as too rare and left out: a class learnt from two examples
would mostly add noise to the others.

Validation is time-disjoint: with three or more tagged sessions the latest
quarter of the sessions is held out whole, otherwise the last quarter of each
session's tagged windows (and training windows that overlap them are dropped).

Training (features.py, finetune.py). Recordings go through the same cached
preprocessing as `merlb train` (obs_merlb.perception, identical to live). By
default the encoders stay frozen: their per-step embeddings are computed once,
and only the Bi-LSTMs, fusion and heads are fine-tuned on them, which takes
seconds to minutes on a CPU. `--train-encoders` runs the full model instead.
The candidate ships calibrated (train/calibrate.py): temperatures fitted on its
held-out windows where a modality set and head have enough of them, the base
model's elsewhere.

Gate (gate.py). Candidate and current (active, else the default) model are
scored on the held-out windows: macro-F1 on every head the streamer's labels
cover, averaged. The candidate becomes active only when it beats the current
model by `--margin` *and* its score is unlikely under shuffled labels
(permutation test, p <= `--alpha`): beating a model that is itself at chance
proves nothing. `--force` activates anyway. Everything goes into the registry
(obs_merlb.registry) through a temp folder renamed at the end, so a killed
run never touches the active model; the running worker is told to
`reload_model` over its WebSocket (obs_merlb/panel/protocol.py).

The rest: progress.py (rich on stderr, JSON lines for the panel), report.py
(review, plots, the HTML/Markdown report), pipeline.py (one run, start to end)
and cli.py (the command; `list`, `activate` and `rollback` load no torch).
"""
