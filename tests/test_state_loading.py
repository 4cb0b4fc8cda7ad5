"""Running statistics brought by a checkpoint (issue 15 item 7; lossdsl.running).

``load_state_dict`` (plain, or ``assign=True``) keeps GHM-C's counts and dtp's averages in their own
dtype whatever the checkpoint's, so counts from a half-precision checkpoint keep growing past
float16's 65504 instead of overflowing to inf (which zeroes the loss). A damaged entry (a NaN or
negative count, an average outside [0, 1], a flag that is not 0 or 1, a wrong shape) is refused by
name before the loss loads anything.
"""

from __future__ import annotations

import math

import pytest
import torch

import lossdsl
from lossdsl import LossInputError

GHM = "ghm(bins=10, momentum=0.75)"
TWO_GHM = "ghm(bins=10, momentum=0.75) + density(bce(), bins=4, momentum=0.5)"
DTP = "dtp({seg: ce(), tags: ghm(bins=10, momentum=0.75), depth: l1()}, alpha=0.5)"


def one_bin_batch(n=196_608):
    """Every element in the same GHM-C bin (|p - y| = 0.5): the bin's count is n per step."""
    return torch.zeros(n, 1), torch.zeros(n, 1)


def dtp_batch(seed):
    generator = torch.Generator().manual_seed(seed)
    preds = {"seg": torch.randn(6, 3, generator=generator), "tags": torch.randn(6, 4, generator=generator),
             "depth": torch.randn(6, generator=generator)}
    targets = {"seg": torch.randint(0, 3, (6,), generator=generator),
               "tags": (torch.rand(6, 4, generator=generator) > 0.5).float(),
               "depth": torch.randn(6, generator=generator)}
    return preds, targets


def trained_dtp(seed=0):
    loss = lossdsl.compile(DTP)
    loss.observe(depth=0.4)
    loss(*dtp_batch(seed))
    return loss


def as_half(state):
    return {key: value.half() if value.is_floating_point() else value for key, value in state.items()}


def snapshot(loss):
    return {name: value.clone() for name, value in loss.state_dict().items()}


def assert_unchanged(loss, before):
    after = loss.state_dict()
    for name, value in after.items():
        assert value.dtype == before[name].dtype and torch.equal(value, before[name]), name


# --------------------------------------------------------------------------------------------------
# the statistics keep their dtype


@pytest.mark.parametrize("assign", [False, True])
def test_ghm_counts_loaded_from_a_half_checkpoint_stay_float32_and_grow_past_float16s_range(assign):
    trained = lossdsl.compile(GHM)
    trained(*one_bin_batch())  # the bin's running count: 0.25 * 196608 = 49152, a float16 number
    checkpoint = as_half(trained.state_dict())
    assert checkpoint["terms.0.ghm_accumulator"].dtype == torch.float16
    resumed = lossdsl.compile(GHM)
    resumed.load_state_dict(checkpoint, assign=assign)
    assert resumed.terms[0].ghm_accumulator.dtype == torch.float32
    for step in range(3):
        value = resumed(*one_bin_batch())
        trained(*one_bin_batch())
        # the reference: the same steps continued in float32 from the same (float16-exact) counts
        torch.testing.assert_close(resumed.terms[0].ghm_accumulator, trained.terms[0].ghm_accumulator)
        # one bin: weight tot / (count * 1 bin) per element, so a finite, non-zero loss
        assert math.isfinite(value.item()) and value.item() > 0
    expected = 49_152.0
    for _ in range(3):
        expected = 0.75 * expected + 0.25 * 196_608
    assert resumed.terms[0].ghm_accumulator.max().item() == pytest.approx(expected)
    assert expected > torch.finfo(torch.float16).max


@pytest.mark.parametrize("assign", [False, True])
def test_dtp_averages_loaded_from_a_half_checkpoint_stay_float32_and_the_flags_bool(assign):
    trained = trained_dtp()
    checkpoint = trained.state_dict()
    resumed = lossdsl.compile(DTP)
    resumed.load_state_dict(as_half(checkpoint), assign=assign)
    for task in ("seg", "tags", "depth"):
        assert resumed.kpi_average[task].dtype == torch.float32
        assert resumed.kpi_seen[task].dtype == torch.bool and bool(resumed.kpi_seen[task])
        saved = checkpoint[f"kpi_average.{task}"]
        torch.testing.assert_close(resumed.kpi_average[task], saved.half().float())
    assert resumed.tasks["tags"].terms[0].ghm_accumulator.dtype == torch.float32


def test_a_loss_built_on_the_meta_device_gets_float32_statistics_from_a_half_checkpoint():
    """assign=True is how a model built on the meta device gets its tensors."""
    trained = trained_dtp()
    with torch.device("meta"):
        resumed = lossdsl.compile(DTP)
    resumed.load_state_dict(as_half(trained.state_dict()), assign=True)
    assert resumed.kpi_average["seg"].device.type == "cpu"
    assert resumed.kpi_average["seg"].dtype == torch.float32
    assert resumed.tasks["tags"].terms[0].ghm_accumulator.dtype == torch.float32


def test_a_flag_saved_as_a_number_and_a_legacy_one_element_average_load():
    trained = trained_dtp()
    checkpoint = dict(trained.state_dict())
    checkpoint["kpi_seen.seg"] = torch.tensor(1.0)
    checkpoint["kpi_average.seg"] = checkpoint["kpi_average.seg"].reshape(1)  # torch loads [1] into []
    resumed = lossdsl.compile(DTP)
    resumed.load_state_dict(checkpoint)
    assert resumed.kpi_seen["seg"].dtype == torch.bool and bool(resumed.kpi_seen["seg"])
    assert torch.equal(resumed.kpi_average["seg"], trained.kpi_average["seg"])


# --------------------------------------------------------------------------------------------------
# damaged entries are refused by name, with nothing loaded


def ghm_checkpoint():
    trained = lossdsl.compile(TWO_GHM)
    trained(torch.randn(8, 3), (torch.rand(8, 3) > 0.5).float())
    return trained.state_dict()


GHM_DAMAGE = [
    ("nan", lambda t: t.index_fill(0, torch.tensor([2]), float("nan")), "holds NaN or inf"),
    ("inf", lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "holds NaN or inf"),
    ("negative", lambda t: t - t.max() - 1, "must be >= 0; found values from "),
    ("shape", lambda t: torch.cat([t, t[:1]]), "has shape [5]; this loss's has shape [4]"),
]


@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("damage", GHM_DAMAGE, ids=[case[0] for case in GHM_DAMAGE])
def test_damaged_ghm_counts_are_refused_by_name_before_anything_is_loaded(damage, strict, assign):
    _, spoil, problem = damage
    checkpoint = dict(ghm_checkpoint())
    key = "terms.1.ghm_accumulator"  # the second term's: the first term's counts load before it
    checkpoint[key] = spoil(checkpoint[key])
    loss = lossdsl.compile(TWO_GHM)
    before = snapshot(loss)
    with pytest.raises(LossInputError) as caught:
        loss.load_state_dict(checkpoint, strict=strict, assign=assign)
    assert caught.value.reason.startswith(
        f"state_dict entry '{key}' (GHM-C's running bin counts) {problem}"
    ), caught.value.reason
    assert caught.value.reason.endswith("; nothing was loaded")
    assert_unchanged(loss, before)


AVERAGE = "(dtp's average of a task's indicator)"
DTP_DAMAGE = [
    ("kpi_average.tags", torch.tensor(1.5), f"{AVERAGE} must lie in [0, 1]; found 1.5"),
    ("kpi_average.tags", torch.tensor(-0.25), f"{AVERAGE} must lie in [0, 1]; found -0.25"),
    ("kpi_average.depth", torch.tensor(float("nan")), f"{AVERAGE} holds NaN or inf"),
    ("kpi_average.seg", torch.tensor([0.5, 0.5]), "has shape [2]; this loss's has shape []"),
    ("kpi_seen.depth", torch.tensor(0.5),
     "(dtp's flag of a task's first indicator) must hold 0 or 1 (a flag)"),
    ("tasks.tags.terms.0.ghm_accumulator", -torch.ones(10),
     "(GHM-C's running bin counts) must be >= 0; found -1"),
]


@pytest.mark.parametrize("key, value, problem", DTP_DAMAGE)
def test_damaged_dtp_state_is_refused_by_name_before_anything_is_loaded(key, value, problem):
    checkpoint = dict(trained_dtp(seed=1).state_dict())
    checkpoint[key] = value
    loss = trained_dtp(seed=2)
    before = snapshot(loss)
    with pytest.raises(LossInputError) as caught:
        loss.load_state_dict(checkpoint)
    assert caught.value.reason.startswith(f"state_dict entry '{key}' "), caught.value.reason
    assert problem in caught.value.reason
    assert_unchanged(loss, before)


def test_the_hint_for_a_damaged_entry_works_when_followed():
    checkpoint = dict(trained_dtp(seed=1).state_dict())
    checkpoint["kpi_average.tags"] = torch.tensor(2.0)
    loss = lossdsl.compile(DTP)
    with pytest.raises(LossInputError) as caught:
        loss.load_state_dict(checkpoint)
    assert caught.value.hint == (
        "the checkpoint is damaged or comes from another loss; to start this statistic afresh, delete "
        "state_dict['kpi_average.tags'] and load with strict=False"
    )
    del checkpoint["kpi_average.tags"]
    result = loss.load_state_dict(checkpoint, strict=False)
    assert result.missing_keys == ["kpi_average.tags"]
    assert torch.equal(loss.kpi_average["seg"], checkpoint["kpi_average.seg"])


def test_a_loss_nested_in_a_model_checks_its_statistics_under_the_models_prefix():
    model = torch.nn.ModuleDict({"head": torch.nn.Linear(3, 3), "loss": lossdsl.compile(TWO_GHM)})
    checkpoint = {f"loss.{key}": value for key, value in ghm_checkpoint().items()}
    checkpoint.update({f"head.{key}": value for key, value in model["head"].state_dict().items()})
    checkpoint["loss.terms.1.ghm_accumulator"] = torch.full((4,), float("nan"))
    before = snapshot(model["loss"])
    with pytest.raises(LossInputError, match=r"state_dict entry 'loss.terms.1.ghm_accumulator' "):
        model.load_state_dict(checkpoint)
    assert_unchanged(model["loss"], before)


# --------------------------------------------------------------------------------------------------
# what dtp knew about the replaced state is forgotten on load


def test_a_regression_task_needs_an_indicator_again_after_loading_a_state_without_one():
    loss = trained_dtp()
    fresh = lossdsl.compile(DTP).state_dict()  # no indicator seen yet
    loss.load_state_dict(fresh)
    with pytest.raises(LossInputError, match="dtp needs an indicator for regression task 'depth'"):
        loss(*dtp_batch(3))


def test_an_observed_indicator_does_not_outlive_a_load():
    """observe() blended its value into the averages that the checkpoint replaces: the next step
    measures the task like a loss that only loaded the checkpoint."""
    checkpoint = trained_dtp(seed=1).state_dict()
    loss, twin = trained_dtp(seed=2), lossdsl.compile(DTP)
    loss.observe(seg=0.1)
    for module in (loss, twin):
        module.load_state_dict(checkpoint)
        module(*dtp_batch(4))
    for task in ("seg", "tags", "depth"):
        assert torch.equal(loss.kpi_average[task], twin.kpi_average[task]), task
