"""How `evomerge --help` reads: commands in the order a user meets them, options without type noise.

Typer labels every parameter with its Python type (`--resume <bool>`, `experiment <path>`). The help
here reads like click's and argparse's: a flag shows nothing, an option that takes a value shows a
placeholder (`PATH`, `INTEGER`, `[table|json]`, or the option's own `metavar`), an argument shows
its name in capitals. Typer builds its parameter objects itself and has no hook for their class,
so the group below gives each command, and each parameter as help lists it, a subclass that only
overrides how parameter types are displayed.
"""

from __future__ import annotations

from typing import Any, get_args

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

# The user's path: search (and plan its memory), inspect, export, check, then the tools around it.
# `plan` sits right after `search`: it reads the same experiment file and answers the question to
# ask before starting one (what each worker will hold and read).
COMMAND_ORDER = (
    "search",
    "plan",
    "status",
    "front",
    "plot",
    "export",
    "audit",
    "merge",
    "calibrate",
    "irt",
    "banks",
    "dashboard",
)

_TYPE_NAMES = {int: "INTEGER", float: "FLOAT", str: "TEXT"}


def _placeholder(option: TyperOption) -> str:
    """The option's value placeholder, as click shows it."""
    described = option.type_descriptor
    if described.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in described.choices or ()) + "]"
    if described.is_path:
        return "PATH"
    element = get_args(described.annotation)[0] if described.is_list else described.annotation
    return _TYPE_NAMES.get(element, "VALUE")


class PlainOption(TyperOption):
    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        return self.metavar if self.metavar is not None else _placeholder(self)


class PlainArgument(TyperArgument):
    def display_type_rich(self, ctx: Any) -> str | None:
        return None  # the argument's name (in capitals) and its help say what it is


def _plain(param: Any) -> Any:
    if type(param) is TyperOption:
        param.__class__ = PlainOption
    elif type(param) is TyperArgument:
        param.__class__ = PlainArgument
        if param.metavar is None:
            param.metavar = (param.name or "").upper()
    return param


class PlainCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return [_plain(param) for param in super().get_params(ctx)]  # the help option included


class PlainGroup(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return [_plain(param) for param in super().get_params(ctx)]


def _plain_commands(group: TyperGroup) -> None:
    for command in group.commands.values():
        if type(command) is TyperCommand:
            command.__class__ = PlainCommand
        elif type(command) is TyperGroup:
            command.__class__ = PlainGroup
            _plain_commands(command)


class EvomergeGroup(PlainGroup):
    """The top-level group: commands in COMMAND_ORDER (others after them), plain parameter display."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        _plain_commands(self)

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda name: rank.get(name, len(rank)))
