"""Which weights should the teacher keep? One fine-tune with the default loop (``teacher.finetune`` and
its val watch), and the val and dev scores of every way to choose its weights from that one run: each
look's weights (the loop keeps the best on val), the uniform average of the last k looks (k = 2..5), and
exponential moving averages of the weights (decays 0.998, 0.999, 0.9995, updated every step).

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/teacher_weights.py sst2 0 benchmarks/results/teacher-weights.jsonl

One (task, seed) per call, one JSON line appended per call. The EMAs cost time every step: the run's
training time is not the loop's (``benchmarks/teacher.py`` times that).
"""
import json
import os
import sys
import time

import torch

from autocompress import teacher as T
from autocompress.evaluate import predict_torch, score
from autocompress.features import EVAL_MAX_LENGTH, TransferSet, encode
from autocompress.tasks import load_task
from transformers import AutoModelForSequenceClassification, AutoTokenizer

task, seed = sys.argv[1], int(sys.argv[2])
out = sys.argv[3]
data = load_task(task, os.environ.get("AUTOCOMPRESS_GLUE_DIR"), seed=seed)
settings = T.TeacherSettings(task=data.spec.name, val_size=len(data.val), seed=seed)
source = T.resolve_model(settings.model)
tok = AutoTokenizer.from_pretrained(source)
names = data.spec.label_names
model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=len(names), attn_implementation="sdpa")
idx = T._subset(len(data.train), settings.train_examples, seed)
rows = data.train.select(idx)
pad = tok.pad_token_id or 0
train_set = TransferSet(encode(tok, rows, settings.max_length), torch.tensor(list(rows["label"])),
                        torch.zeros(len(rows), data.spec.num_labels), pad_id=pad)
watch = T.watch_val(model, tok, settings, data, len(rows), lambda m: print(m, flush=True))
looks = {}
orig = watch.evaluate


def evaluate(step, loss):
    looks[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return orig(step, loss)


watch.evaluate = evaluate
decays = (0.998, 0.999, 0.9995)
emas = {d: {k: v.detach().clone().float() for k, v in model.state_dict().items()} for d in decays}


@torch.no_grad()
def progress(step, total, loss):
    sd = model.state_dict()
    for d, e in emas.items():
        for k, v in sd.items():
            if v.is_floating_point():
                e[k].lerp_(v, 1 - d)
    if step % 200 == 0:
        print(f"step {step}/{total} loss {loss:.4f}", flush=True)


t0 = time.time()
T.finetune(model, train_set, settings, progress, watch)
train_s = time.time() - t0
vf = encode(tok, data.val, EVAL_MAX_LENGTH)
df = encode(tok, data.dev, EVAL_MAX_LENGTH)


def both(sd):
    model.load_state_dict(sd)
    model.eval()
    v = score(data.spec, predict_torch(model, vf, pad_id=pad), data.val["label"], "val").main
    d = score(data.spec, predict_torch(model, df, pad_id=pad), data.dev["label"], "dev").main
    return v, d


res = {"task": task, "seed": seed, "train_s": round(train_s, 1), "kept_step": watch.kept_step,
       "stopped": watch.stopped, "curve": watch.curve, "looks": {}, "avg": {}, "ema": {}}
steps = sorted(looks)
for s in steps:
    res["looks"][s] = both(looks[s])
    print("look", s, res["looks"][s], flush=True)
for k in (2, 3, 4, 5):
    if len(steps) >= k:
        sel = steps[-k:]
        avg = {n: (sum(looks[s][n].float() for s in sel) / k).to(looks[sel[0]][n].dtype)
               if looks[sel[0]][n].is_floating_point() else looks[sel[-1]][n] for n in looks[sel[0]]}
        res["avg"][k] = both(avg)
        print("avg last", k, res["avg"][k], flush=True)
for d, e in emas.items():
    res["ema"][d] = both(e)
    print("ema", d, res["ema"][d], flush=True)
res["date"] = time.strftime("%Y-%m-%d %H:%M")
with open(out, "a") as f:
    f.write(json.dumps(res) + "\n")
