"""The fine-tuning options, one table: every field of a training config declares itself once.

A field of :class:`~hr_depth_ros.core.training.trainer.TrainingConfig` is written with :func:`option`,
which stores an :class:`Option` (help, type, choices, command-line flag, ROS parameter name, the
ROS value that stands for None) in the field's metadata. Generated from it, ROS-free:

- the ``finetune`` command line (:func:`add_arguments`, :func:`config_from_args`,
  :func:`args_from_config`),
- the ``hr_depth_finetune`` node's parameters (:func:`node_parameters`) and the mapping of their
  values to a config (:func:`config_from_parameters`),
- config/finetune.yaml (:func:`yaml_text`; ``python scripts/finetune_yaml.py --write``) and the
  README table (:func:`markdown_table`).

Adding an option is one edit: a new ``option(...)`` field. A field that neither the command line
nor the node sets carries ``internal='reason'``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import textwrap
from dataclasses import MISSING, dataclass
from typing import Any, Mapping, Sequence

__all__ = ['Option', 'option', 'options', 'NodeParameter', 'NODE_PARAMETERS', 'node_parameters', 'check_limits',
           'add_arguments', 'config_from_args', 'args_from_config', 'config_from_parameters', 'yaml_text',
           'markdown_table', 'NODE_NAME']

NODE_NAME = 'hr_depth_finetune'
_SCALARS = (bool, int, float, str)


@dataclass(frozen=True)
class Option:
    """How one config field appears on the command line and as a node parameter.

    ``cli``: flag ('' = ``--field-name``, ``--no-field-name`` for a bool that defaults to true; None =
    none); ``ros``: parameter name ('' = the field's name; None = none); ``unset``: the parameter value
    that stands for None (ROS parameters cannot be None; on the command line an empty string stands
    for None when ``unset`` is ''); ``nargs``: a list field (an int: that many values; '+': a
    repeatable flag); ``exclusive``: command-line group of which one member may be given;
    ``fallback``: the value when no member of that group is given (also the node's default);
    ``min_value`` / ``max_value``: inclusive limits of a value that is not None (:func:`check_limits`);
    ``cli_default``: the command line's default where it differs from the node's (None: the same); ``read_only``: the
    node refuses a change while configured (the depth node's table, :mod:`hr_depth_ros.core.depth_options`).
    """

    help: str
    type: type | None = None
    choices: tuple[str, ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    cli: str | None = ''
    ros: str | None = ''
    unset: Any = None
    nargs: int | str | None = None
    metavar: tuple[str, ...] | str | None = None
    exclusive: str = ''
    fallback: Any = None
    cli_help: str = ''
    internal: str = ''
    cli_default: Any = None
    read_only: bool = False
    name: str = ''                  # filled in by options()
    default: Any = None             # filled in by options(); None for a required field
    required: bool = False          # filled in by options(): the field has no default

    @property
    def value_type(self) -> type:
        """The type of the value (of each element, for a list)."""
        if self.type is not None:
            return self.type
        for value in (self.default, self.fallback, self.unset):
            if value is not None:
                return type(value)
        raise TypeError(f'option {self.name}: give type= (default, fallback and unset are None)')

    @property
    def flag(self) -> str | None:
        if self.internal or self.cli is None:
            return None
        if self.cli:
            return self.cli
        prefix = '--no-' if self.value_type is bool and self.default is True else '--'
        return prefix + self.name.replace('_', '-')

    @property
    def parameter(self) -> str | None:
        if self.internal or self.ros is None:
            return None
        return self.ros or self.name

    @property
    def ros_default(self) -> Any:
        """The node's default: None for a list (declared by type: unset), else a typed value."""
        if self.nargs is not None:
            return None
        if self.fallback is not None:
            return self.fallback
        return self.unset if self.default is None else self.default

    @property
    def limits(self) -> str:
        """The limits in words ('' when none): '>= 1', '0 .. 1'."""
        low, high = self.min_value, self.max_value
        if low is not None and high is not None:
            return f'{low} .. {high}'
        return f'>= {low}' if low is not None else (f'<= {high}' if high is not None else '')

    @property
    def description(self) -> str:
        """The parameter's description (help, limits, and what its unset value means)."""
        text = self.help + (f' ({self.limits})' if self.limits else '')
        if self.required:
            return f'{text} (required)'
        return text + (f' (node: {json.dumps(self.unset)} = unset)' if self.unset is not None else '')


def option(default: Any = MISSING, help: str = '', **kwargs: Any) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field carrying its :class:`Option` (``default`` MISSING: a required field)."""
    spec = Option(help=help, **kwargs)
    if isinstance(default, (list, dict, set)):
        raise TypeError('use a tuple or None as the default of a list option')
    return dataclasses.field(default=default, metadata={'option': spec})


def options(config_class: type) -> tuple[Option, ...]:
    """Every field's Option, with name and default filled in (TypeError for a field without one)."""
    result = []
    for f in dataclasses.fields(config_class):
        spec = f.metadata.get('option')
        if spec is None:
            raise TypeError(f'{config_class.__name__}.{f.name} is not declared with option()')
        required = f.default is MISSING
        result.append(dataclasses.replace(spec, name=f.name, default=None if required else f.default,
                                          required=required))
    return tuple(result)


@dataclass(frozen=True)
class NodeParameter:
    """A parameter of the node alone (not part of the training config)."""

    name: str
    default: Any
    description: str


NODE_PARAMETERS: tuple[NodeParameter, ...] = (
    NodeParameter('progress_period', 1.0, 'minimum seconds between ~/progress messages'),
    NodeParameter('nproc', 1, 'processes: > 1 runs the job through torchrun (DistributedDataParallel; batch_size '
                  'is per process)'),
)


def node_parameters(config_class: type, extra: Sequence[NodeParameter] = NODE_PARAMETERS,
                    ) -> tuple[NodeParameter, ...]:
    """The node's parameters: one per option with a parameter name, then ``extra``.

    A list parameter's default is None (declared by type, unset; :func:`list_parameters` gives its
    element type).
    """
    result = [NodeParameter(spec.parameter, spec.ros_default, spec.description)
              for spec in options(config_class) if spec.parameter]
    return (*result, *extra)


def list_parameters(config_class: type) -> dict[str, type]:
    """Parameter name -> element type, for the list parameters (declared by type)."""
    return {spec.parameter: spec.value_type for spec in options(config_class) if spec.parameter and spec.nargs}


def check_limits(config: Any) -> None:
    """ValueError naming the first field of ``config`` outside what the table declares: its ``choices``, its
    number of values (``nargs`` an int), its ``min_value`` / ``max_value``."""
    for spec in options(type(config)):
        value = getattr(config, spec.name)
        if value is None:
            continue
        if spec.choices and value not in spec.choices:
            raise ValueError(f'{spec.name} must be one of {", ".join(spec.choices)}, got {value!r}')
        if isinstance(spec.nargs, int) and len(value) != spec.nargs:
            raise ValueError(f'{spec.name} takes {spec.nargs} values, got {list(value)}')
        if isinstance(value, (bool, str)) or spec.nargs is not None:
            continue
        if (spec.min_value is not None and not value >= spec.min_value) or (
                spec.max_value is not None and not value <= spec.max_value):
            raise ValueError(f'{spec.name} must be {spec.limits}, got {value}')


# -- command line ------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One argument per option with a flag (dest: the field's name)."""
    groups: dict[str, Any] = {}
    for spec in options(config_class):
        flag = spec.flag
        if flag is None:
            continue
        target = parser
        if spec.exclusive:
            if spec.exclusive not in groups:
                groups[spec.exclusive] = parser.add_mutually_exclusive_group()
            target = groups[spec.exclusive]
        text = (spec.cli_help or spec.help) + (f' ({spec.limits})' if spec.limits else '')
        kwargs: dict[str, Any] = {'dest': spec.name, 'help': text.replace('%', '%%')}
        if spec.value_type is bool and spec.nargs is None:
            kwargs['action'] = 'store_false' if spec.default is True else 'store_true'
        else:
            kwargs.update(type=spec.value_type, default=spec.default if spec.cli_default is None
                          else spec.cli_default)
            if spec.choices:
                kwargs['choices'] = spec.choices
            if spec.nargs == '+':
                kwargs['action'] = 'append'
            elif spec.nargs is not None:
                kwargs['nargs'] = spec.nargs
            kwargs['metavar'] = spec.metavar or flag.lstrip('-').replace('-', '_').upper()
            if spec.required:
                kwargs['required'] = True
                kwargs.pop('default')
        target.add_argument(flag, **kwargs)


def _settle_groups(specs: Sequence[Option], values: dict[str, Any]) -> None:
    """In each exclusive group: a member given clears the fallback member; none given: the fallback."""
    for spec in specs:
        if spec.exclusive and spec.fallback is not None:
            others = [s.name for s in specs if s.exclusive == spec.exclusive and s is not spec]
            if any(values.get(name) is not None for name in others):
                values[spec.name] = None
            elif values.get(spec.name) is None:
                values[spec.name] = spec.fallback


def config_from_args(args: argparse.Namespace, config_class: type, **fixed: Any) -> Any:
    """Parsed arguments (:func:`add_arguments`) -> a ``config_class``; ``fixed`` sets fields directly."""
    specs = options(config_class)
    values: dict[str, Any] = {}
    for spec in specs:
        if spec.flag is None:
            continue
        value = getattr(args, spec.name)
        if spec.unset == '' and value == '':
            value = None
        values[spec.name] = list(value) if spec.nargs is not None and value is not None else value
    _settle_groups(specs, values)
    return config_class(**values, **fixed)


def args_from_config(config: Any) -> list[str]:
    """A config -> the command-line arguments that give it back (settings without a flag are left out)."""
    args: list[str] = []
    for spec in options(type(config)):
        flag, value = spec.flag, getattr(config, spec.name)
        if flag is None:
            continue
        if spec.value_type is bool and spec.nargs is None:
            args += [flag] if value != bool(spec.default) else []
        elif value is None:  # an option switched off that is on by default is an empty argument
            args += [flag, ''] if spec.unset == '' and spec.default is not None else []
        elif spec.nargs == '+':
            for item in value:
                args += [flag, str(item)]
        elif spec.nargs is not None:
            args += [flag, *(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return args


# -- node ---------------------------------------------------------------------------------------------
def config_from_parameters(values: Mapping[str, Any], config_class: type, **fixed: Any) -> Any:
    """Node parameter values (None: a list never set) -> a ``config_class``; ``fixed`` sets fields.

    ValueError naming the parameter when a required one is empty.
    """
    specs = options(config_class)
    result: dict[str, Any] = {}
    for spec in specs:
        name = spec.parameter
        if name is None:
            continue
        value = values.get(name)
        if spec.nargs is not None:
            value = [spec.value_type(v) for v in (value or []) if v != '']
            value = value or None
        elif value is not None and value == spec.unset and not isinstance(value, bool):
            value = None
        elif value is not None:
            value = spec.value_type(value)
        if spec.required and not value:
            raise ValueError(f"parameter '{name}' is empty" + (': give at least one' if spec.nargs else ''))
        result[spec.name] = value
    _settle_groups(specs, result)
    return config_class(**result, **fixed)


# -- generated files -----------------------------------------------------------------------------------
def yaml_scalar(value: Any) -> str:
    """``value`` written so that YAML reads it back with its type."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, float):
        text = repr(value)
        if 'e' in text and '.' not in text:  # YAML 1.1 reads 1e-05 as a string
            mantissa, exponent = text.split('e')
            text = f'{mantissa}.0e{exponent}'
        return text if math.isfinite(value) else {'inf': '.inf', '-inf': '-.inf'}.get(text, '.nan')
    if isinstance(value, str):
        plain = value and all(c.isalnum() or c in '/_.-' for c in value) and not value[0].isdigit()
        return value if plain and value.lower() not in ('true', 'false', 'yes', 'no', 'on', 'off', 'null') \
            else json.dumps(value)
    return str(value)


def yaml_text(config_class: type, extra: Sequence[NodeParameter] = NODE_PARAMETERS,
              header: Sequence[str] | None = None, node_name: str = NODE_NAME) -> str:
    """config/finetune.yaml (or, given its ``header`` comment and ``node_name``, another node's parameter
    file): every node parameter with its default, its description as a comment."""
    lists = list_parameters(config_class)
    lines = [*header] if header is not None else [
             '# Defaults of the fine-tuning node (ros2 run hr_depth_ros finetune_node), generated from the option',
             '# table (hr_depth_ros/core/training/options.py) by: python scripts/finetune_yaml.py --write',
             '#   ros2 run hr_depth_ros finetune_node --ros-args --params-file config/finetune.yaml \\',
             "#       -p bags:=\"['/data/drive1']\" -p output_dir:=/data/finetuned",
             f'# Not set here (lists, given on the command line or in your own file): {", ".join(lists)}.']
    lines += [f'{node_name}:', '  ros__parameters:']
    for parameter in node_parameters(config_class, extra):
        if parameter.name in lists:
            continue
        lines += [f'    # {line}' for line in textwrap.wrap(parameter.description, 100)]
        lines.append(f'    {parameter.name}: {yaml_scalar(parameter.default)}')
    return '\n'.join(lines) + '\n'


def markdown_table(config_class: type, extra: Sequence[NodeParameter] = NODE_PARAMETERS) -> str:
    """README table: node parameter, CLI flag, default, description."""
    rows = ['| parameter | command line | default | description |', '|---|---|---|---|']

    def default_text(value: Any) -> str:
        if value is None:
            return '(unset)'
        return '`""`' if value == '' else f'`{yaml_scalar(value)}`'

    for spec in options(config_class):
        if spec.internal:
            continue
        description = spec.help + (f' (one of {", ".join(spec.choices)})' if spec.choices else '') + (
            f' ({spec.limits})' if spec.limits else '')
        if spec.read_only:
            description += ' (read-only while configured)'
        if spec.required:
            description += ' (required)'
        elif spec.unset is not None:
            description += f'; node: {default_text(spec.unset)} = unset'
        description = description.replace('|', '\\|')
        name = f'`{spec.parameter}`' if spec.parameter else ''
        flag = f'`{spec.flag}`' if spec.flag else ''
        rows.append(f'| {name} | {flag} | {default_text(spec.ros_default)} | {description} |')
    for parameter in extra:
        rows.append(f'| `{parameter.name}` | | {default_text(parameter.default)} | '
                    f'{parameter.description.replace("|", chr(92) + "|")} |')
    return '\n'.join(rows)
