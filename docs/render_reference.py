"""Renders docs/reference.md, the settings reference, from the traitlets help of the spawner,
the service and the agent (as kubespawner renders its reference from its traits).

    .venv/bin/python docs/render_reference.py          # rewrites docs/reference.md
    .venv/bin/python docs/render_reference.py --check  # exit 1 if it is out of date

tests/test_reference.py fails when the committed file differs from a fresh rendering.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from pathlib import Path
from typing import Any

from traitlets import Container, Dict, Enum, HasTraits, TraitType, Type, Undefined
from traitlets.config import Application, Configurable

from jhub_suspend.agent.app import NodeAgent
from jhub_suspend.service.app import SuspendService
from jhub_suspend.spawner import SuspendingKubeSpawner

OUT = Path(__file__).resolve().parent / "reference.md"

INTRO = """\
# Settings reference

Every setting of the spawner, the suspend service and the node agent, with its type, default
and help, rendered from the code's traitlets help by `docs/render_reference.py` (do not edit
this file; `tests/test_reference.py` fails when it is out of date). How the settings fit
together: [service.md](service.md) (the policy, the REST API) and [deploy.md](deploy.md).

- **SuspendingKubeSpawner** is set in the hub's `jupyterhub_config.py`
  (`c.SuspendingKubeSpawner.checkpoint_repository = ...`), with Zero to JupyterHub under
  `hub.config.SuspendingKubeSpawner` (helm-values/jhub-suspend.yaml).
- **SuspendService** (`jhub-suspend-service`, or `python -m jhub_suspend.service`) and
  **NodeAgent** (`jhub-suspend-agent`) read a config file (`-f FILE` for the service,
  `--config FILE` for the agent: `c.SuspendService.idle_window = 1800`) and the command line
  (`--SuspendService.idle_window=1800`). `--generate-config` prints a config file with every
  setting and its help, commented out.
- The settings for reaching the node agents (`agent_urls`, `agent_token`, `agent_ca_file`,
  `agent_client_cert`, `agent_client_key`, `agent_call_timeout`, `agent_reconnect_timeout`)
  are declared once, in `AgentClientConfig`, and shared by the spawner and the service: set
  them for both at once as `c.AgentClientConfig.agent_token = ...`, or per class.

A default marked *computed* is worked out when the object is created, from the expression
shown (environment variables, other settings), unless the setting is given.
"""


def _type_name(trait: TraitType) -> str:
    name = type(trait).__name__
    if isinstance(trait, Enum):
        name += "(" + " | ".join(repr(v) for v in trait.values or ()) + ")"
    elif isinstance(trait, Container) and getattr(trait, "_trait", None) is not None:
        name += f"({type(trait._trait).__name__})"
    elif isinstance(trait, Dict) and getattr(trait, "_value_trait", None) is not None:
        name += f"(values: {type(trait._value_trait).__name__})"
    elif isinstance(trait, Type):
        name += f"(subclass of {_qualname(trait.klass)})"
    if trait.allow_none:
        name += " or None"
    return name


def _qualname(klass: Any) -> str:
    if isinstance(klass, str):
        return klass
    return f"{klass.__module__}.{klass.__qualname__}"


def _computed(cls: type[HasTraits], name: str) -> str | None:
    """The expression of a dynamic default (``@default``) that is one ``return``, '' for a
    longer one, None for a static default."""
    handler = cls._trait_default_generators.get(name)  # type: ignore[attr-defined]
    func = getattr(handler, "func", None)
    if func is None:
        return None
    tree = ast.parse(textwrap.dedent(inspect.getsource(func))).body[0]
    assert isinstance(tree, ast.FunctionDef)
    body = [
        s
        for s in tree.body
        if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))  # docstring
    ]
    if len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None:
        return ast.unparse(body[0].value)
    return ""


def _constant(cls: type[HasTraits], name: str) -> str | None:
    """The value of a dynamic default that only returns a literal (it overrides a parent's)."""
    computed = _computed(cls, name)
    if computed:
        try:
            return repr(ast.literal_eval(computed))
        except ValueError:
            return None
    return None


def _default(cls: type[HasTraits], name: str, trait: TraitType) -> str:
    constant = _constant(cls, name)
    if constant is not None:
        return f"`{constant}`"
    computed = _computed(cls, name)
    if computed:
        return f"computed: `{computed}`"
    if computed == "":
        return "computed when the object is created (see the help)"
    if isinstance(trait, Type):
        return f"`{_qualname(trait.default_value)}`"
    if isinstance(trait.default_value, set | frozenset):  # (in a fixed order)
        return "`{" + ", ".join(sorted(map(repr, trait.default_value))) + "}`"
    value = trait.default_value_repr()
    if value == repr(Undefined):
        return "none"
    return f"`{value}`"


def _help(trait: TraitType, first_paragraph: bool = False) -> str:
    text = inspect.cleandoc(trait.help or "")
    if first_paragraph:
        # (traitlets' own help is reStructuredText; its first paragraph reads as Markdown)
        text = text.split("\n\n")[0]
    return text or "*(no help)*"


def _switches(cls: type[Configurable], name: str) -> list[str]:
    """The command line's short forms of a setting (an Application's aliases and flags)."""
    if not issubclass(cls, Application):
        return []
    full = f"{cls.__name__}.{name}"
    found = []
    for alias, target in sorted(cls.aliases.items()):
        target = target[0] if isinstance(target, tuple) else target
        if target == full or (target == f"Application.{name}" and hasattr(cls, name)):
            found.append(f"`{'-' if len(alias) == 1 else '--'}{alias}`")
    for flag, (settings, _) in sorted(cls.flags.items()):
        for section, values in settings.items():
            if section in (cls.__name__, "Application") and name in values:
                found.append(f"`--{flag}` (sets {values[name]!r})")
    return found


def project_settings(cls: type[HasTraits]) -> list[str]:
    """The settings jhub-suspend declares for the class (in it or in a base class of this
    project), in the order the source declares them."""
    traits = cls.class_traits(config=True)
    order: list[str] = []
    for klass in cls.__mro__:
        if klass.__module__.startswith("jhub_suspend"):
            order += [n for n in vars(klass) if n in traits and n not in order]
    return order


def _trait_section(
    cls: type[Configurable], name: str, trait: TraitType, owner: str, inherited: bool = False
) -> str:
    lines = [f"{'####' if inherited else '###'} `{owner}.{name}`", ""]
    facts = f"{_type_name(trait)}; default {_default(cls, name, trait)}"
    switches = _switches(cls, name)
    if switches:
        facts += "; command line " + ", ".join(switches)
    lines += [facts + ".", "", _help(trait, first_paragraph=inherited), ""]
    return "\n".join(lines)


def render_class(cls: type[Configurable], summary: str, inherited: str) -> str:
    doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    parts = [f"## {cls.__name__}", "", f"`{cls.__module__}.{cls.__name__}`: {doc}", ""]
    if summary:
        parts += [summary, ""]
    traits = cls.class_traits(config=True)
    own = project_settings(cls)
    for name in own:
        parts.append(_trait_section(cls, name, traits[name], cls.__name__))
    if inherited:
        rest = {n: t for n, t in sorted(traits.items()) if n not in own}
        if rest:
            parts += [inherited, ""]
            for name, trait in rest.items():
                owner = next(k.__name__ for k in cls.__mro__ if name in vars(k))
                parts.append(_trait_section(cls, name, trait, owner, inherited=True))
    return "\n".join(parts)


def render() -> str:
    spawner_rest = len(SuspendingKubeSpawner.class_traits(config=True)) - len(
        project_settings(SuspendingKubeSpawner)
    )
    sections = [
        INTRO,
        render_class(
            SuspendingKubeSpawner,
            "Its own settings are below. It is a KubeSpawner and takes every other KubeSpawner "
            f"and Spawner setting ({spawner_rest} of them) as documented in kubespawner's "
            "reference, under `c.SuspendingKubeSpawner` or `c.KubeSpawner`.",
            "",
        ),
        render_class(
            SuspendService,
            "",
            "### Logging and the command line\n\nSettings of traitlets' `Application`, which the "
            "service is; set them as `c.Application.*` or `c.SuspendService.*`.",
        ),
        render_class(
            NodeAgent,
            "",
            "### Logging and the command line\n\nSettings of traitlets' `Application`, which the "
            "agent is; set them as `c.Application.*` or `c.NodeAgent.*`.",
        ),
    ]
    return "\n".join(s.rstrip("\n") + "\n" for s in sections)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run {Path(__file__).name} to update it", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
