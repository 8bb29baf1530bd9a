"""torch-style ``param_groups`` for an optimizer that keeps its hyper-parameters as attributes.

The schedulers and the loss scaler only read and write ``opt.param_groups``. An optimizer with
one buffer and attribute hyper-parameters (``opt.lr``, ``opt.betas``) is shown to them as one
group whose hyper-parameter keys read and write those attributes, so the optimizer's own
checks still apply. Other keys a scheduler stores (``initial_lr``, ``max_lr``) live beside it.
"""
from collections.abc import MutableMapping
import weakref

_VIEWS = weakref.WeakKeyDictionary()  # optimizer -> its one-group view, shared by every scheduler


class _AttributeGroup(MutableMapping):
    def __init__(self, opt, hypers, extras):
        self._opt, self._hypers, self._extras = opt, hypers, extras

    def __getitem__(self, key):
        if key in self._hypers:
            return getattr(self._opt, key)
        return self._extras[key]

    def __setitem__(self, key, value):
        if key in self._hypers:
            setattr(self._opt, key, value)
        else:
            self._extras[key] = value

    def __delitem__(self, key):
        if key in self._hypers:
            raise KeyError(f"{key!r} is a hyper-parameter of the optimizer and cannot be removed")
        del self._extras[key]

    def __iter__(self):
        yield from self._hypers
        yield from self._extras

    def __len__(self):
        return len(self._hypers) + len(self._extras)


def param_groups(opt):
    """``opt.param_groups``, or one group over the optimizer's hyper-parameter attributes."""
    groups = getattr(opt, "param_groups", None)
    if groups is not None:
        return groups
    try:
        return _VIEWS[opt]
    except (KeyError, TypeError):
        pass
    state_dict = getattr(opt, "state_dict", None)
    if not callable(state_dict) or not hasattr(opt, "lr"):
        raise TypeError(f"optimizer must have param_groups (or an lr attribute), got {type(opt).__name__}")
    hypers = tuple(state_dict()["param_groups"][0])
    try:
        # A proxy, so that the cached view does not keep its optimizer alive.
        view = [_AttributeGroup(weakref.proxy(opt), hypers, {})]
        _VIEWS[opt] = view
    except TypeError:  # not weakly referenceable: added keys live with this view only
        view = [_AttributeGroup(opt, hypers, {})]
    return view


def defaults(opt):
    """The option names an optimizer takes (torch's ``opt.defaults``, else the first group's keys)."""
    found = getattr(opt, "defaults", None)
    return found if found is not None else param_groups(opt)[0]
