"""A method's keys outside its ``TRAINER.<SECTION>`` (ProGrad's ``LOSS.*``, DePT's head and staged
learning rates) are one mechanism, :attr:`fastprompt.train.methods.MethodSpec.outside`: each key
starts at its declared default, has the audit entry its treatment says, is read into the learner
through the one reader, refused at a value fastprompt does not implement, or accepted as inert."""
import pytest

from fastprompt.errors import ConfigError
from fastprompt.train.config import flatten, resolve_config
from fastprompt.train.key_audit import BASE, audit_table, same_value
from fastprompt.train.methods import BASE_DEFAULT, METHODS, Outside, learner_kwargs

WITH_OUTSIDE = sorted(m for m, s in METHODS.items() if s.outside)
CASES = [(m, k) for m in WITH_OUTSIDE for k in METHODS[m].outside]


def _other(value):
    """A value of ``value``'s type that differs from it (what a config file could set instead)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 0.5 if isinstance(value, float) else value + 1
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, (list, tuple)):
        return list(value)[:-1]
    raise AssertionError(f"no other value for {value!r}")


def test_both_baselines_declare_outside_keys():
    # the mechanism serves ProGrad and the four DePT combinations; a spec that drops them would make
    # the tests below vacuous
    assert {"prograd", "coop_dept", "kgcoop_dept", "cocoop_dept", "maple_dept"} <= set(WITH_OUTSIDE)


@pytest.mark.parametrize("method,key", CASES)
def test_each_outside_key_starts_at_its_default_with_the_entry_its_treatment_names(method, key):
    entry = METHODS[method].outside[key]
    flat = flatten(resolve_config([], method=method))
    assert key in flat, f"{method} declares {key}, which its configuration lacks"
    if entry.default is not BASE_DEFAULT:
        assert same_value(flat[key], entry.default)
    audit = audit_table(method)[key]
    if entry.kwarg is not None or entry.read_by:
        assert audit.kind == "read"
    elif entry.allowed:
        assert audit.kind == "fixed" and audit.allowed == entry.allowed
    elif entry.why:
        assert audit.kind == "inert" and audit.note == entry.why
    else:  # only re-defaulted: every run's treatment
        assert audit == BASE[key]


@pytest.mark.parametrize("method,key", [(m, k) for m, k in CASES if METHODS[m].outside[k].kwarg is not None])
def test_the_learner_reads_each_outside_kwarg_from_the_configuration(method, key):
    spec, entry = METHODS[method], METHODS[method].outside[key]
    default = flatten(resolve_config([], method=method))[key]
    value = _other(default)
    cfg = resolve_config([], method=method, overrides=[key, repr(value)])
    kwargs = learner_kwargs(method, cfg["TRAINER"][spec.section], None, flatten(cfg))
    assert kwargs[entry.kwarg] == entry.convert(value)


@pytest.mark.parametrize("method,key", [(m, k) for m, k in CASES if METHODS[m].outside[k].allowed])
def test_an_outside_key_at_a_value_fastprompt_does_not_implement_is_refused(method, key):
    value = _other(METHODS[method].outside[key].allowed[0])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + " .*is not supported"):
        resolve_config([], method=method, overrides=[key, repr(value)])


@pytest.mark.parametrize("method,key", [(m, k) for m, k in CASES
                                        if METHODS[m].outside[k].why and not METHODS[m].outside[k].allowed])
def test_an_inert_outside_key_is_accepted_at_any_value(method, key):
    value = _other(flatten(resolve_config([], method=method))[key])
    assert same_value(flatten(resolve_config([], method=method, overrides=[key, repr(value)]))[key], value)


def test_an_outside_key_has_one_treatment():
    with pytest.raises(ValueError, match="one treatment"):
        Outside(kwarg="T", why="declared, never read")
    with pytest.raises(ValueError, match="one treatment"):
        Outside(read_by="fastprompt.train.schedule", allowed=(True,))
