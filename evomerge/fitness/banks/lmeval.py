"""Banks from lm-eval 0.4 tasks, rendered by lm-eval's own task objects.

The task builds its requests exactly as `lm_eval.simple_evaluate` would (`build_all_requests`:
`doc_to_text`, the few-shot context drawn by the task's sampler with the same seed, `doc_to_choice`,
`doc_to_target`, `target_delimiter`, `generation_kwargs`), and each document becomes one item:

- `multiple_choice`: prompt = the request's context, choices = the choice texts, `target_delimiter`
  = the task's; scored with `normalization: sum` this is lm-eval's `acc`, with `chars` its `acc_norm`;
- `generate_until`: prompt = the context, target = `doc_to_target`, `until` = the request's stops,
  and where the task's filter pipeline has a `regex` step, `answer_regex` / `answer_regex_select`.

Every item records its `origin`: lm-eval's version, the task's name and version, and the sha256 of
the task's config. lm-eval is an optional dependency (`pip install 'evomerge[lmeval]'`), needed only
to build a bank; scoring a bank never imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.fitness.banks.items import Item

# lm-eval's default few-shot seed (`simple_evaluate(fewshot_random_seed=1234)`), so a bank's
# few-shot contexts are the ones an lm-eval run draws.
FEWSHOT_SEED = 1234


def lm_eval_items(
    task: str,
    *,
    include_path: Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    filter_name: str | None = None,
    fewshot_seed: int = FEWSHOT_SEED,
) -> list[Item]:
    """The items of an lm-eval task, group or task YAML (every leaf task's documents, in order)."""
    tasks, group = _load(task, include_path)
    items: list[Item] = []
    for name, task_object in tasks.items():
        if num_fewshot is not None:
            task_object.set_config("num_fewshot", num_fewshot)
        task_object.set_fewshot_seed(fewshot_seed)
        task_object.build_all_requests(limit=limit, rank=0, world_size=1)
        items += _task_items(task_object, name, group, filter_name)
    return items


def _load(task: str, include_path: Path | None) -> tuple[dict[str, Any], str | None]:
    """The leaf tasks (name -> lm-eval Task) and the group's name where `task` is a group."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError(
            "building a bank from an lm-eval task needs lm-eval: pip install 'evomerge[lmeval]'"
        ) from None
    if include_path is not None and not include_path.is_dir():
        raise ConfigError(f"--include-path {str(include_path)!r} is not a directory of task YAMLs")
    is_yaml = Path(task).suffix in (".yaml", ".yml")
    if is_yaml and not Path(task).is_file():
        raise ConfigError(f"task YAML {task!r} does not exist; give a registered task name or a YAML path")
    # Indexing lm-eval's ~15k built-in tasks takes a minute: a YAML path, or a name found under
    # --include-path, is loaded without them.
    folders = str(include_path) if include_path else None
    manager = TaskManager(include_path=folders, include_defaults=False) if is_yaml or folders else None
    if manager is None or not (is_yaml or task in manager.all_tasks):
        manager = TaskManager(include_path=folders)
    try:
        loaded = manager.load(task)
    except KeyError:
        raise ConfigError(
            f"lm-eval has no task, group or tag {task!r}; give a registered name (lm_eval ls tasks), "
            "a task YAML path, or --include-path DIR holding its YAML"
        ) from None
    except OSError as error:  # datasets' ConnectionError / FileNotFoundError are OSErrors
        raise ConfigError(
            f"lm-eval task {task!r}: its data could not be loaded ({error}); offline, write a task YAML "
            "whose dataset_kwargs.data_files name local JSON files"
        ) from None
    groups = list(loaded["groups"])
    return loaded["tasks"], groups[0] if len(groups) == 1 else None


def _task_items(task: Any, name: str, group: str | None, filter_name: str | None) -> list[Item]:
    if task.OUTPUT_TYPE not in ("multiple_choice", "generate_until"):
        raise ConfigError(
            f"lm-eval task {name!r} has output_type {task.OUTPUT_TYPE!r}; banks are made from "
            "multiple_choice and generate_until tasks"
        )
    if task.OUTPUT_TYPE == "multiple_choice" and task.multiple_input:
        raise ConfigError(
            f"lm-eval task {name!r} puts its choices in the context (multiple inputs); not supported"
        )
    requests: dict[int, list[Any]] = defaultdict(list)
    for instance in task.instances:
        requests[instance.doc_id].append(instance)
    base = {"task": group or name, **({"group": name} if group else {}), "origin": _origin(task, name)}
    extraction = _extraction(task, name, filter_name) if task.OUTPUT_TYPE == "generate_until" else {}
    items = []
    for doc_id, instances in sorted(requests.items()):
        instances.sort(key=lambda instance: instance.idx)
        doc = instances[0].doc
        where = f"lm-eval task {name!r} document {doc_id}"
        data: dict[str, Any] = {
            **base,
            "id": f"{name}/{doc_id}",
            "prompt": instances[0].arguments[0],
            "meta": {"source": "lm-eval", "doc_id": doc_id},
        }
        if task.OUTPUT_TYPE == "multiple_choice":
            data.update(_choice_fields(task, doc, instances, where))
        else:
            data.update(_generative_fields(task, doc, instances[0], where), **extraction)
        items.append(Item.from_dict(data, where))
    return items


def _choice_fields(task: Any, doc: dict[str, Any], instances: list[Any], where: str) -> dict[str, Any]:
    """Choices as lm-eval's requests hold them (delimiter + choice), checked against `doc_to_choice`."""
    choices = [str(choice) for choice in task.doc_to_choice(doc)]
    delimiter = task.config.target_delimiter
    if [instance.arguments[1] for instance in instances] != [delimiter + choice for choice in choices]:
        raise ConfigError(f"{where}: the requests' continuations are not target_delimiter + doc_to_choice")
    gold = task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else -1
    if not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise ConfigError(
            f"{where}: doc_to_target gives {gold!r}, not one index of its {len(choices)} choices"
        )
    return {"choices": choices, "answer": gold, "target_delimiter": delimiter}


def _generative_fields(task: Any, doc: dict[str, Any], instance: Any, where: str) -> dict[str, Any]:
    target = task.doc_to_target(doc)
    if isinstance(target, list):
        raise ConfigError(f"{where}: several targets ({len(target)}); a bank item holds one")
    kwargs = instance.arguments[1]
    until = kwargs.get("until")
    fields: dict[str, Any] = {"target": str(target)}
    if until:
        fields["until"] = [until] if isinstance(until, str) else list(until)
    return fields


def _extraction(task: Any, name: str, filter_name: str | None) -> dict[str, Any]:
    """The regex step of the task's filter pipeline (its first, or the one named), read from the
    filter objects lm-eval built for it."""
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.filters.selection import TakeFirstFilter

    pipelines = task._filters
    if filter_name is not None:
        pipelines = [p for p in pipelines if p.name == filter_name]
        if not pipelines:
            known = [p.name for p in task._filters]
            raise ConfigError(f"lm-eval task {name!r} has no filter {filter_name!r}; its filters: {known}")
    steps = [make() for make in pipelines[0].filters]
    regexes = [step for step in steps if type(step) is RegexFilter]
    others = [type(step).__name__ for step in steps if type(step) not in (RegexFilter, TakeFirstFilter)]
    if others or len(regexes) > 1:
        raise ConfigError(
            f"lm-eval task {name!r}: filter {pipelines[0].name!r} has steps {others or 'regex x2'}; a bank "
            "carries one regex step (and take_first); choose another pipeline with --filter"
        )
    if not regexes:
        return {}
    return {"answer_regex": regexes[0].regex_pattern, "answer_regex_select": regexes[0].group_select}


def _origin(task: Any, name: str) -> dict[str, str]:
    """Where the items come from; the config hash leaves out the YAML's own path on this machine."""
    config = task.dump_config()
    metadata = {k: v for k, v in (config.get("metadata") or {}).items() if k != "config_source"}
    canonical = json.dumps({**config, "metadata": metadata}, sort_keys=True, default=str)
    return {
        "harness": "lm-eval",
        "harness_version": version("lm_eval"),
        "task": name,
        "task_version": str(metadata.get("version", task.VERSION)),
        "config_sha256": hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
    }
