"""Every bad input gets a clear error naming the argument, and nothing is lost."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import Constant, Mean, UPGrad
from jdoptim.autogram import Engine


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def inputs() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, 5, generator=generator), torch.randn(16, 3, generator=generator)


def task_losses(model: nn.Module) -> Tensor:
    x, y = inputs()
    return ((model(x) - y) ** 2).mean(dim=0)


def trained(aggregator=None, **kwargs) -> tuple[nn.Sequential, JacobianOptimizer]:
    """A model after one Adam step, with gradients accumulated for the next one."""
    model = make_model()
    opt = JacobianOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), aggregator, **kwargs)
    opt.step(task_losses(model))
    opt.zero_grad()
    opt.backward(task_losses(model))
    return model, opt


def snapshot(model: nn.Module, opt: JacobianOptimizer) -> dict:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": copy.deepcopy(opt.optimizer.state_dict()),
        "weights": opt.last_weights,
    }


def assert_unchanged(model: nn.Module, opt: JacobianOptimizer, before: dict) -> None:
    after = snapshot(model, opt)
    for actual, expected in zip(after["params"], before["params"]):
        assert torch.equal(actual, expected)
    for actual, expected in zip(after["grads"], before["grads"]):
        assert (actual is None and expected is None) or torch.equal(actual, expected)
    for key, state in before["state"]["state"].items():
        for name, value in state.items():
            assert torch.equal(after["state"]["state"][key][name], value)
    assert after["state"]["param_groups"] == before["state"]["param_groups"]
    assert after["weights"] is before["weights"]


def check_refused(
    model: nn.Module,
    opt: JacobianOptimizer,
    call: Callable[[], object],
    error: type[Exception],
    match: str,
) -> None:
    before = snapshot(model, opt)
    with pytest.raises(error, match=match):
        call()
    assert_unchanged(model, opt, before)


@pytest.mark.parametrize("method", ["step", "backward"])
def test_losses_that_do_not_require_grad(method: str) -> None:
    model, opt = trained()
    losses = task_losses(model).detach()
    check_refused(model, opt, lambda: getattr(opt, method)(losses), ValueError, "`losses`")


@pytest.mark.parametrize("method", ["step", "backward"])
def test_empty_list_of_losses(method: str) -> None:
    model, opt = trained()
    check_refused(model, opt, lambda: getattr(opt, method)([]), ValueError, "`losses`")


def test_losses_of_the_wrong_type() -> None:
    model, opt = trained()
    check_refused(model, opt, lambda: opt.step([1.0, 2.0]), TypeError, "`losses`")


def test_step_with_an_unknown_keyword_argument() -> None:
    model, opt = trained()
    message = r"`step` got unexpected keyword arguments \['gradtensors'\].*grad_tensors"
    check_refused(
        model, opt, lambda: opt.step(task_losses(model), gradtensors=None), TypeError, message
    )


def test_losses_that_depend_on_no_parameter_of_the_optimizer() -> None:
    model, opt = trained()
    other = nn.Parameter(torch.ones(2))
    check_refused(model, opt, lambda: opt.step(other * 2), ValueError, "`losses`")


def test_a_loss_not_connected_to_some_parameters_gives_zero_rows() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Mean())
    x, y = inputs()
    hidden = model[1](model[0](x))
    losses = [((model[2](hidden) - y) ** 2).mean(), hidden.pow(2).mean()]  # 2nd skips model[2]
    opt.step(losses)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_parameters_in_two_groups() -> None:
    model, opt = trained()
    shared = next(model.parameters())
    with pytest.raises(ValueError, match="`param_group`"):
        opt.add_param_group({"params": [shared]})
    assert len(opt.param_groups) == 1
    # Edited behind the optimizer's back: refused at the next backward.
    opt.param_groups.append({**opt.param_groups[0], "params": [shared]})
    check_refused(model, opt, lambda: opt.step(task_losses(model)), ValueError, "`optimizer`")


def test_parameters_in_two_groups_at_construction() -> None:
    model = make_model()
    sgd = torch.optim.SGD(model[0].parameters(), lr=0.1)
    sgd.param_groups.append({**sgd.param_groups[0], "params": [model[0].weight]})
    with pytest.raises(ValueError, match="`optimizer`"):
        JacobianOptimizer(sgd)


def test_features_unrelated_to_the_losses() -> None:
    model, opt = trained()
    x, _ = inputs()
    unrelated = model[0](x * 2)
    check_refused(
        model,
        opt,
        lambda: opt.step(task_losses(model), features=unrelated),
        ValueError,
        "`features`",
    )


def test_features_that_do_not_require_grad() -> None:
    model, opt = trained()
    x, _ = inputs()
    features = model[1](model[0](x)).detach()
    check_refused(
        model,
        opt,
        lambda: opt.backward(task_losses(model), features=features),
        ValueError,
        "`features`",
    )


@pytest.mark.parametrize("use_features", [False, True])
def test_grad_tensors_of_the_wrong_shape(use_features: bool) -> None:
    model, opt = trained()
    x, y = inputs()
    features = model[1](model[0](x))
    losses = [((model[2](features) - y) ** 2).mean(dim=0), model[2](features).mean()]
    grad_tensors = [torch.ones(2), torch.tensor(1.0)]  # the first loss has shape [3]
    kwargs = {"features": features} if use_features else {}
    check_refused(
        model,
        opt,
        lambda: opt.step(losses, grad_tensors=grad_tensors, **kwargs),
        ValueError,
        "`grad_tensors`",
    )


def test_grad_tensors_give_one_row_per_loss() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
    x, y = inputs()
    squared_errors = (model(x) - y) ** 2  # [16, 3]
    opt.backward(
        [squared_errors[:, 0], squared_errors[:, 1:]],
        grad_tensors=[torch.full((16,), 1 / 16), torch.full((16, 2), 1 / 32)],
    )
    assert opt.last_weights[0].shape == (2,)


def test_constant_aggregator_of_the_wrong_length() -> None:
    model, opt = trained(Constant(torch.tensor([1.0, 2.0, 3.0])))
    two_losses = task_losses(model)[:2]
    check_refused(model, opt, lambda: opt.step(two_losses), ValueError, "`weights`")


def test_constant_aggregator_of_the_wrong_length_in_a_later_group() -> None:
    model = make_model()
    opt = JacobianOptimizer(
        torch.optim.Adam(
            [
                {"params": model[0].parameters(), "aggregator": UPGrad()},
                {"params": model[2].parameters(), "aggregator": Constant(torch.ones(2))},
            ]
        )
    )
    check_refused(model, opt, lambda: opt.step(task_losses(model)), ValueError, "parameter group 1")


def test_gramian_mode_with_losses_without_the_batch_dimension() -> None:
    model = make_model()
    engine = Engine(model, batch_dim=1)
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), engine=engine)
    x, y = inputs()
    losses = ((model(x) - y) ** 2).mean(dim=1)  # [16]: no dimension 1
    check_refused(model, opt, lambda: opt.step(losses), ValueError, "batch_dim")


def test_gramian_mode_with_a_mean_reduced_loss() -> None:
    model = make_model()
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), engine=Engine(model, batch_dim=0)
    )
    x, y = inputs()
    loss = ((model(x) - y) ** 2).mean()  # a scalar: the batch dimension was reduced
    check_refused(model, opt, lambda: opt.step(loss), ValueError, r"`losses` .*batch_dim=0")


def test_gramian_mode_rejects_multi_task_arguments() -> None:
    model = make_model()
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), engine=Engine(model, batch_dim=0)
    )
    x, y = inputs()
    losses = ((model(x) - y) ** 2).mean(dim=1)
    check_refused(
        model, opt, lambda: opt.step(losses, features=model[0](x)), ValueError, "`features`"
    )


def test_gramian_mode_rejects_group_aggregators() -> None:
    model = make_model()
    sgd = torch.optim.SGD([{"params": model.parameters(), "aggregator": Mean()}], lr=0.1)
    with pytest.raises(ValueError, match="aggregator"):
        JacobianOptimizer(sgd, engine=Engine(model, batch_dim=0))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"optimizer": "sgd"}, TypeError, "`optimizer`"),
        ({"aggregator": "upgrad"}, TypeError, "`aggregator`"),
        ({"aggregator": UPGrad}, TypeError, r"`aggregator` .*the class UPGrad .*UPGrad\(\)"),
        ({"weighting": Mean()}, ValueError, "`weighting`"),
        ({"parallel_chunk_size": 0}, ValueError, "`parallel_chunk_size`"),
        ({"engine": object()}, TypeError, "`engine`"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    model = make_model()
    arguments = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1), **kwargs}
    with pytest.raises(error, match=match):
        JacobianOptimizer(**arguments)


def test_wrapping_a_jacobian_optimizer_is_refused() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="`optimizer`"):
        JacobianOptimizer(opt)


@pytest.mark.parametrize("process_group", ["nccl", 0, object()])
def test_process_group_of_the_wrong_type_is_refused_at_construction(process_group) -> None:
    model = make_model()
    with pytest.raises(TypeError, match="`process_group` must be None or a"):
        JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), process_group=process_group)


def test_non_finite_error_says_which_group_and_what_was_found() -> None:
    model = make_model()
    opt = JacobianOptimizer(
        torch.optim.SGD(
            [{"params": model[0].parameters()}, {"params": model[2].parameters()}], lr=0.1
        ),
        Mean(),
    )
    x, y = inputs()
    losses = ((model(x) - y) ** 2).mean(dim=0)
    with pytest.raises(ValueError, match=r"parameter group 0 \(NaN\), parameter group 1 \(NaN\)"):
        opt.step(losses * float("nan"))
    model[2].weight.grad = torch.full_like(model[2].weight, float("inf"))
    with pytest.raises(ValueError, match=r"group 1 \(inf\) are not finite") as raised:
        opt.step()
    assert "a loss that is itself NaN or inf" in str(raised.value)
    assert "GradScaler" in str(raised.value)


def test_losses_on_the_meta_device_are_refused_up_front() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    meta = torch.empty(3, device="meta", requires_grad=True) * 2
    with pytest.raises(ValueError, match="meta device"):
        opt.backward(meta)


def test_losses_on_another_device_than_the_parameters_are_refused() -> None:
    model = make_model().to("meta")
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = inputs()
    losses = ((make_model()(x) - y) ** 2).mean(dim=0)
    with pytest.raises(
        ValueError, match=r"`losses` must be on the device of the parameters \(meta\)"
    ):
        opt.backward(losses)


def test_add_param_group_accepts_a_generator_of_parameters() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model[0].parameters(), lr=0.1))
    opt.add_param_group({"params": model[2].parameters(), "aggregator": Mean()})
    assert [len(group["params"]) for group in opt.param_groups] == [2, 2]
    with pytest.raises(ValueError, match="`param_group`"):
        opt.add_param_group({"params": model[2].parameters()})
