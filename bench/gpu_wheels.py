"""Prints name==version for each runtime dependency of the installed `tunelab` (its transitive
closure, extras of the main requirements included, the `worker` and `dev` extras left out)
that the GPU machine's image does not already hold: the wheels bench/gpu_run.sh packs.

Run with the project's virtualenv, after `make install`: `.venv/bin/python -m bench.gpu_wheels`.
"""

import importlib.metadata as md
import re

from packaging.requirements import Requirement

# The Python packages of the GPU machine's image (nvidia-h200, Python 3.12, PyTorch with CUDA).
ON_DEVICE = set(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax
e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions
nanobind narwhals networkx ninja numba numba-cuda numpy numpyro onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson
six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
)
# The embedded default needs no PostgreSQL driver; tunelab itself travels as the checkout.
SKIP = {"psycopg", "psycopg-binary", "tunelab"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure() -> dict[str, str]:
    """Every distribution the installed tunelab needs at run time, by its normalised name."""
    found: dict[str, tuple[str, set[str]]] = {}
    todo = [Requirement(r) for r in md.distribution("tunelab").requires or []]
    todo = [r for r in todo if not (r.marker and "extra" in str(r.marker))]
    while todo:
        req = todo.pop()
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue
        name, extras = norm(req.name), set(req.extras)
        if name in found and extras <= found[name][1]:
            continue
        found.setdefault(name, (dist.version, set()))[1].update(extras)
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker and not any(sub.marker.evaluate({"extra": e}) for e in {"", *extras}):
                continue
            todo.append(sub)
    return {name: version for name, (version, _) in found.items()}


def main() -> None:
    for name, version in sorted(closure().items()):
        if name not in ON_DEVICE and name not in SKIP:
            print(f"{name}=={version}")


if __name__ == "__main__":
    main()
