"""What an experiment's image is built from: the pipeline's stamp stage depends on these files, and each
image carries their digest as a label, so a stage never runs in an image built from other sources."""

import hashlib
from pathlib import Path

from medrepro.suite import registry

# The Dockerfiles, their ignore files and the lock the base installs; the experiment image copies the
# library and the experiment's directory besides.
IMAGE_FILES = ("images/base/Dockerfile", "images/base/Dockerfile.dockerignore", "images/experiment/Dockerfile",
               ".dockerignore", "images/requirements.lock")
INPUTS_LABEL = "org.medrepro.inputs"


def image_inputs(experiment: str) -> list[str]:
    """What `medrepro images build` reads for the experiment's image (paths relative to the repository)."""
    return [*IMAGE_FILES, "shared/medrepro", "experiments/__init__.py", f"experiments/{experiment}"]


def inputs_digest(experiment: str, root: Path | None = None) -> str:
    """SHA-256 over the image inputs' relative paths and contents (bytecode left out, as the build does)."""
    root = root or registry.repo_root()
    digest = hashlib.sha256()
    for top in image_inputs(experiment):
        path = root / top
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" not in file.parts:
                digest.update(f"{file.relative_to(root).as_posix()}\0".encode() + file.read_bytes())
    return digest.hexdigest()
