"""The command line explains itself: descriptions, plain help, --version, config show --doc, quiet pipes."""

import argparse
import dataclasses
import subprocess
import sys

import pytest
import yaml

from videoconvmae.cli import build_parser, main
from videoconvmae.config import Config, field_docs, load_config, to_dict


def all_parsers(parser, path=("videoconvmae",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, (*path, name))


def test_every_command_has_a_description_and_plain_help():
    parsers = list(all_parsers(build_parser()))
    assert len(parsers) > 15
    for path, parser in parsers:
        assert parser.description and len(parser.description) > 10, " ".join(path)
        text = parser.format_help()
        assert "`" not in text and ":func:" not in text, " ".join(path)  # no reST (``x``) nor markdown ticks


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("videoconvmae 0.1.0")


def test_every_config_field_has_a_one_line_meaning():
    def sections(cls):
        yield cls
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
                yield from sections(f.default_factory)

    for cls in sections(Config):
        docs = field_docs(cls)
        assert set(docs) == {f.name for f in dataclasses.fields(cls)}, cls.__name__
        assert all(docs.values()), cls.__name__


def test_config_show_doc_prints_every_key_with_type_and_meaning(capsys):
    assert main(["config", "show", "--doc", "pretrain_k400_tiny", "data.batch_size=3"]) == 0
    out = capsys.readouterr().out
    cfg = load_config("pretrain_k400_tiny", ["data.batch_size=3"])
    assert yaml.safe_load(out) == to_dict(cfg)  # still the resolved config, as YAML
    lines = out.splitlines()
    assert "  batch_size: 3  # int: " + field_docs(type(cfg.data))["batch_size"] in lines
    assert "  mask_ratio: 0.75  # float | None: " + field_docs(type(cfg.model))["mask_ratio"] in lines
    assert sum(1 for line in lines if "#" in line) == len(lines)


# The commands that train, evaluate or build a model need these; help, config, jobs and --sbatch do not, and every
# command start (each subprocess and Slurm job of the suite) paid several seconds for them while they loaded.
HEAVY_MODULES = ("torch", "torchvision", "timm", "av", "decord", "torchcodec", "matplotlib", "tensorboard")
IMPORTED_HEAVY = """
import sys
from videoconvmae.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("loaded:", *sorted(m for m in {heavy} if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["--help"], ["config", "show", "pretrain_k400_tiny"], ["pretrain", "--help"],
                                  ["launch", "pretrain", "pretrain_k400_tiny", "--sbatch"]])
def test_commands_that_need_no_model_load_no_torch(argv):
    code = IMPORTED_HEAVY.format(heavy=HEAVY_MODULES)
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout, done.stderr
    (loaded,) = [line for line in done.stderr.splitlines() if line.startswith("loaded:")]
    assert loaded == "loaded:", done.stderr


def test_models_piped_into_head_exits_quietly():
    done = subprocess.run(f"{sys.executable} -m videoconvmae models --params | head -1; exit ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", capture_output=True, text=True)
    assert done.stdout.startswith("model") and done.returncode == 0
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_sbatch_of_a_cpu_preset_asks_for_no_gpus(capsys):
    assert main(["launch", "pretrain", "pretrain_k400_tiny", "--sbatch"]) == 0
    script = capsys.readouterr().out
    assert "gpus" not in script and "#SBATCH --ntasks-per-node=1" in script
    assert main(["launch", "pretrain", "pretrain_k400_tiny", "slurm.gpus_per_node=2", "--sbatch"]) == 0
    assert "#SBATCH --gpus-per-node=2" in capsys.readouterr().out  # asked for: kept
    assert main(["launch", "pretrain", "pretrain_k400_base", "--sbatch"]) == 0
    assert "#SBATCH --gpus-per-node=8" in capsys.readouterr().out


def test_data_check_reads_data_keys_only(tmp_path, capsys):
    annotation = tmp_path / "train.csv"
    annotation.write_text("label,youtube_id,time_start,time_end,split\n")
    assert main(["data", "check", str(annotation), "train.seed=3"]) == 2
    assert "reads data.* keys only" in capsys.readouterr().err
