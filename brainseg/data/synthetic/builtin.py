"""The built-in samples by name: the folders "sample" and "sample-brats" stand for.

seg-train takes either name as its data and generates the sample on first use; seg-eval takes the
same name and finds the very sample the source run trained on, from the size and seed in the
run's config.json, so that its patient ids match the run's split.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_SAMPLES = ("sample", "sample-brats")


def builtin_sample(name: str, *, patients: int, slices: int, seed: int) -> Path:
    """The cached folder of built-in sample `name` (generated on first use).

    "sample" is the kaggle_3m-layout sample of `patients` stacks of `slices` slices; "sample-brats"
    is the BraTS sample, whose size is fixed (`BratsSampleSpec`), so only `seed` applies to it.
    """
    if name == "sample":
        from brainseg.data.synthetic.sample import SampleSpec, cached_sample_dataset

        return cached_sample_dataset(SampleSpec(patients=patients, slices=slices, seed=seed))
    if name == "sample-brats":
        from brainseg.data.synthetic.sample_brats import BratsSampleSpec, cached_brats_sample

        return cached_brats_sample(BratsSampleSpec(seed=seed))
    raise ValueError(f"{name!r} is not a built-in sample; they are {', '.join(BUILTIN_SAMPLES)}")
