"""Run inside the consumer virtual environment (not autocompress's): load a folder written by
`autocompress pick` with Hugging Face Optimum, exactly as an app would, and print its predictions.

usage: python optimum_predict.py DIR SENTENCES.json  ->  JSON {"labels": [...], "logits": [[...]], "versions": {...}}
(SENTENCES.json: a list of texts, or of [text, second text] pairs)
"""
import json
import sys

import optimum.onnxruntime
import transformers
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer

folder, sentences = sys.argv[1], json.load(open(sys.argv[2]))
model = ORTModelForSequenceClassification.from_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)
labels, logits = [], []
for example in sentences:                      # one at a time: batch 1, no padding
    texts = example if isinstance(example, list) else [example]
    out = model(**tokenizer(*texts, truncation=True, max_length=128, return_tensors="pt")).logits[0]
    labels.append(model.config.id2label[int(out.argmax())])
    logits.append([float(v) for v in out])
print(json.dumps({"labels": labels, "logits": logits, "model_class": type(model).__name__,
                  "versions": {"transformers": transformers.__version__,
                               "optimum": getattr(optimum.onnxruntime, "__version__", "?")}}))
