import pytest

from fastsample.integration.call_scope import has_call_hook, on_call, remove_call_hook


class Pipe:
    def __init__(self):
        self.log = []

    def __call__(self, x, fail=False):
        self.log.append(("call", x))
        if fail:
            raise RuntimeError("boom")
        return x * 2


def test_callbacks_run_around_each_call_in_order():
    pipe = Pipe()
    on_call(pipe, "a", lambda: pipe.log.append("a+"), lambda: pipe.log.append("a-"))
    on_call(pipe, "b", lambda: pipe.log.append("b+"), lambda: pipe.log.append("b-"))
    assert pipe(3) == 6
    assert pipe.log == ["a+", "b+", ("call", 3), "b-", "a-"]
    assert type(pipe).__name__ == "Pipe" and isinstance(pipe, Pipe) and type(pipe) is not Pipe


def test_end_runs_when_the_call_raises():
    pipe = Pipe()
    on_call(pipe, "a", lambda: None, lambda: pipe.log.append("end"))
    with pytest.raises(RuntimeError):
        pipe(1, fail=True)
    assert pipe.log[-1] == "end"


def test_removing_the_last_hook_restores_the_original_class_and_dict():
    pipe = Pipe()
    before = dict(pipe.__dict__)
    on_call(pipe, "a", lambda: None)
    on_call(pipe, "b", lambda: None)
    remove_call_hook(pipe, "a")
    assert type(pipe) is not Pipe and has_call_hook(pipe, "b") and not has_call_hook(pipe, "a")
    remove_call_hook(pipe, "b")
    assert type(pipe) is Pipe
    assert pipe.__dict__ == before
    remove_call_hook(pipe, "b")  # idempotent


def test_bad_callbacks_are_refused():
    with pytest.raises(TypeError, match="start"):
        on_call(Pipe(), "a", None)


def test_with_arguments_receives_the_bound_call_with_defaults():
    class KwPipe(Pipe):
        def __call__(self, x, fail=False, scale=4.0, **extra):
            return super().__call__(x, fail)

    pipe = KwPipe()
    seen = []
    on_call(pipe, "a", seen.append, with_arguments=True)
    on_call(pipe, "b", lambda: pipe.log.append("b+"))
    on_call(pipe, "c", lambda args: args.clear(), with_arguments=True)  # mutates its own copy only
    pipe(3, scale=7.5, other="o")
    pipe(5)
    assert seen == [
        {"x": 3, "fail": False, "scale": 7.5, "other": "o"},
        {"x": 5, "fail": False, "scale": 4.0},
    ]
    assert pipe.log.count("b+") == 2


def test_with_arguments_refuses_a_bad_call_before_any_callback():
    pipe = Pipe()
    seen = []
    on_call(pipe, "a", seen.append, with_arguments=True)
    with pytest.raises(TypeError):
        pipe(1, unknown=2)
    assert seen == []
