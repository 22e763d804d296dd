# %% [markdown]
# # lensperf quickstart
#
# Simulate a small strong-lensing set, pretrain a small masked autoencoder on its no_sub
# images, fine-tune it to tell no_sub / cdm / axion apart, and plot what it learned. About a
# minute on a laptop CPU. Open it as a notebook (VS Code and Jupytext read the `# %%` cells)
# or run it as a script: `python examples/quickstart.py`. No `if __name__ == "__main__":`
# guard is needed, even though the simulator and the DALI loader start worker processes.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lensperf import api

# LENSPERF_QUICKSTART_SCALE shrinks everything (the test suite runs this at 0.2).
scale = float(os.environ.get("LENSPERF_QUICKSTART_SCALE", "1"))
work = Path(os.environ.get("LENSPERF_QUICKSTART_DIR") or tempfile.mkdtemp(prefix="lensperf-"))
n_per_class = max(24, int(400 * scale))
epochs = max(1, int(3 * scale))

# %% Simulate a Model II-like set (calibrated against real DeepLense images)
store = api.simulate("model_ii", work / "lenses.zarr", n_per_class=n_per_class)
images, labels = api.samples(store, "val", 6)
fig, axes = plt.subplots(1, 6, figsize=(12, 2.2))
for ax, image, label in zip(axes, images, labels):
    ax.imshow(image[0], cmap="inferno")
    ax.set_title(api.CLASSES[label])
    ax.axis("off")

# %% Pretrain a small MAE on the no_sub images, then fine-tune it as a classifier
small = ["model.encoder.dim=64", "model.encoder.heads=4", "model.encoder.depth=2"]
api.train(
    "pretrain",
    "demo",
    [f"out_dir={work / 'mae'}", f"data.store={store}", f"epochs={epochs}", *small],
)
metrics = api.train(
    "finetune_cls",
    "demo",
    [
        f"out_dir={work / 'cls'}",
        f"data.store={store}",
        f"epochs={epochs}",
        f"pretrained={work / 'mae' / 'checkpoint.pt'}",
    ],
)
print(f"accuracy {metrics['accuracy']:.3f}, macro AUC {metrics['auc_macro']:.3f}")

# %% Predict with the trained model, averaging over the 8 symmetries of each image
model = api.load_model(work / "cls" / "checkpoint.pt")
probs = api.predict(model, images, tta=True).numpy()
fig, ax = plt.subplots(figsize=(6, 3))
ax.imshow(probs, cmap="Blues", vmin=0, vmax=1)
ax.set_xticks(range(len(api.CLASSES)), api.CLASSES)
ax.set_yticks(range(len(labels)), [f"true: {api.CLASSES[k]}" for k in labels])
ax.set_title("predicted class probabilities")
print("predicted:", [api.CLASSES[k] for k in np.argmax(probs, axis=1)])

# %% The training curves and report figures are under the run folders
print(sorted(p.name for p in (work / "cls" / "report").iterdir()))
plt.show()
