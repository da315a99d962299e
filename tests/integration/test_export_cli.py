"""`bertserve export` end to end: error paths (one line, exit code 2), versions, the int8 gate,
eval files, atomic writes, and the architectures beyond BERT."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertserve.cli import app
from bertserve.export.errors import ExportError
from bertserve.export.exporter import ExportOptions, planned_steps, run_export
from bertserve.export.specs import applicable
from bertserve.modelrepo import ArtifactFormat, Precision, TagScheme, load_model_config, sha256_file
from tests.helpers.checkpoints import (
    TinyCheckpoint,
    build_bare_bert,
    build_bert_bioes_tagger,
    build_pickle_classifier,
    build_roberta_classifier,
)

runner = CliRunner()


def _cli(*args: str):
    return runner.invoke(app, ["export", *args])


def _assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and fragment in lines[-1], result.stderr
    assert "Traceback" not in result.output


def _copy(checkpoint: TinyCheckpoint, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint.path, tmp_path / "ckpt"))


def _quick(
    model: Path, repo: Path, name: str = "m", task: str = "text-classification", **kw
) -> ExportOptions:
    """ONNX only and no timing: the fastest full export, for tests about the pipeline's logic."""
    return ExportOptions(
        model=str(model),
        task=task,
        name=name,
        repo=repo,
        formats=("onnx",),
        quiet=True,
        measure_speed=False,
        **kw,
    )


# --------------------------------------------------------------------------------------------- errors


def test_missing_path(tmp_path: Path):
    result = _cli("--model", str(tmp_path / "nope"), "--task", "text-classification", "--name", "x")
    _assert_one_line_error(result, "does not exist")


def test_unknown_task(bert_cls_checkpoint, tmp_path: Path):
    result = _cli("--model", str(bert_cls_checkpoint.path), "--task", "summarization", "--name", "x")
    _assert_one_line_error(result, "unknown task 'summarization'")


def test_unknown_format(bert_cls_checkpoint, tmp_path: Path):
    args = ["--model", str(bert_cls_checkpoint.path), "--task", "text-classification", "--name", "x"]
    _assert_one_line_error(_cli(*args, "--formats", "onnx,tensorflow"), "unknown format")


def test_segmentation_is_checked_and_written(bert_ner_checkpoint, bert_cls_checkpoint, tmp_path: Path):
    ner = ["--model", str(bert_ner_checkpoint.path), "--task", "token-classification", "--name", "x"]
    _assert_one_line_error(_cli(*ner, "--segmentation", "paragraphs"), "unknown segmentation 'paragraphs'")
    cls = ["--model", str(bert_cls_checkpoint.path), "--task", "text-classification", "--name", "x"]
    _assert_one_line_error(_cli(*cls, "--segmentation", "sentences"), "token-classification models only")
    repo = tmp_path / "repo"
    run_export(
        _quick(bert_ner_checkpoint.path, repo, "tagger", "token-classification", segmentation="sentences")
    )
    assert load_model_config(repo, "tagger").segmentation == "sentences"
    run_export(_quick(bert_ner_checkpoint.path, repo, "tagger", "token-classification"))  # version 2
    assert load_model_config(repo, "tagger").segmentation == "sentences"  # kept, like batching


def test_checkpoint_without_a_head(tmp_path: Path):
    bare = build_bare_bert(tmp_path / "bare")
    result = _cli(
        "--model", str(bare.path), "--task", "text-classification", "--name", "x", "--repo", str(tmp_path)
    )
    _assert_one_line_error(result, "has no text-classification head (BertModel)")
    assert not (tmp_path / "x").exists()


def test_checkpoint_without_a_head_nor_architectures(tmp_path: Path):
    """Without `architectures` in config.json, the missing classifier weights still give it away."""
    bare = build_bare_bert(tmp_path / "bare")
    config = json.loads((bare.path / "config.json").read_text())
    del config["architectures"]
    (bare.path / "config.json").write_text(json.dumps(config))
    result = _cli(
        "--model", str(bare.path), "--task", "text-classification", "--name", "x", "--repo", str(tmp_path)
    )
    _assert_one_line_error(result, "has no text-classification head (weights missing: classifier")


def test_task_does_not_match_head(bert_ner_checkpoint, tmp_path: Path):
    result = _cli("--model", str(bert_ner_checkpoint.path), "--task", "text-classification", "--name", "x")
    _assert_one_line_error(result, "has a token-classification head (BertForTokenClassification)")


def test_label_count_mismatch(bert_cls_checkpoint, tmp_path: Path):
    ckpt = _copy(bert_cls_checkpoint, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config["id2label"] = {"0": "NEGATIVE", "1": "NEUTRAL", "2": "POSITIVE"}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    (ckpt / "config.json").write_text(json.dumps(config))
    result = _cli(
        "--model", str(ckpt), "--task", "text-classification", "--name", "x", "--repo", str(tmp_path)
    )
    _assert_one_line_error(result, "label count mismatch")


def test_missing_tokenizer(bert_cls_checkpoint, tmp_path: Path):
    ckpt = _copy(bert_cls_checkpoint, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (ckpt / name).unlink()
    result = _cli(
        "--model", str(ckpt), "--task", "text-classification", "--name", "x", "--repo", str(tmp_path)
    )
    _assert_one_line_error(result, "tokenizer")


def test_slow_only_tokenizer(bert_cls_checkpoint, tmp_path: Path):
    """A tokenizer class without a fast (Rust) implementation cannot be served."""
    ckpt = _copy(bert_cls_checkpoint, tmp_path)
    (ckpt / "tokenizer.json").unlink()
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="BertJapaneseTokenizer", word_tokenizer_type="basic")
    (ckpt / "tokenizer_config.json").write_text(json.dumps(config))
    result = _cli(
        "--model", str(ckpt), "--task", "text-classification", "--name", "x", "--repo", str(tmp_path)
    )
    _assert_one_line_error(result, "only has a slow (Python) tokenizer (BertJapaneseTokenizer)")


def test_pickle_weights_need_allow_pickle(tmp_path: Path):
    ckpt = build_pickle_classifier(tmp_path / "pickled")
    repo = tmp_path / "repo"
    args = ["--model", str(ckpt.path), "--task", "text-classification", "--name", "p", "--repo", str(repo)]
    _assert_one_line_error(_cli(*args), "--allow-pickle")
    result = _cli(*args, "--allow-pickle", "--formats", "onnx")
    assert result.exit_code == 0, result.output
    assert "default precision: fp32" in result.stderr and "onnx-optimized/fp32" in result.stderr
    report = json.loads((repo / "p" / "1" / "export_report.json").read_text())
    assert any("pickle" in note for note in report["notes"])


def test_existing_version_is_refused(bert_cls_checkpoint, tmp_path: Path):
    run_export(_quick(bert_cls_checkpoint.path, tmp_path))
    args = ["--model", str(bert_cls_checkpoint.path), "--task", "text-classification", "--name", "m"]
    result = _cli(*args, "--repo", str(tmp_path), "--version", "1")
    _assert_one_line_error(result, "version 1 of m already exists")


def test_other_labels_under_an_existing_name_are_refused(
    bert_cls_checkpoint, bert_multilabel_checkpoint, tmp_path
):
    run_export(_quick(bert_cls_checkpoint.path, tmp_path))
    with pytest.raises(ExportError, match="already exists with a different contract"):
        run_export(_quick(bert_multilabel_checkpoint.path, tmp_path))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "model.yaml"]


# --------------------------------------------------------------------------------------------- repository


def test_new_version_keeps_the_old_one(bert_cls_checkpoint, tmp_path: Path):
    first = run_export(_quick(bert_cls_checkpoint.path, tmp_path))
    old_digest = sha256_file(first.version_dir / "model.onnx")
    second = run_export(_quick(bert_cls_checkpoint.path, tmp_path))
    assert (first.version, second.version) == (1, 2)
    config = load_model_config(tmp_path, "m")
    assert config.default_version == 2 and sorted(config.versions) == [1, 2]
    assert config.versions[1].find("onnx", "fp32").files["model.onnx"] == old_digest  # type: ignore[union-attr]
    assert sha256_file(tmp_path / "m" / "1" / "model.onnx") == old_digest
    third = run_export(_quick(bert_cls_checkpoint.path, tmp_path, version=7))
    assert third.version == 7 and load_model_config(tmp_path, "m").default_version == 7


def test_failed_validation_leaves_nothing_behind(bert_cls_checkpoint, tmp_path: Path):
    with pytest.raises(ExportError, match="does not match PyTorch"):
        run_export(_quick(bert_cls_checkpoint.path, tmp_path, fp32_atol=0.0))
    assert list(tmp_path.iterdir()) == []  # no version, no staging folder, no model.yaml
    run_export(_quick(bert_cls_checkpoint.path, tmp_path))
    with pytest.raises(ExportError):
        run_export(_quick(bert_cls_checkpoint.path, tmp_path, fp32_atol=0.0))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "model.yaml"]
    assert load_model_config(tmp_path, "m").default_version == 1


def test_steps_are_the_planned_ones(bert_cls_checkpoint, tmp_path: Path):
    """The progress bar's length comes from the spec list: every planned step runs, in order."""
    eval_file = tmp_path / "dev.tsv"
    eval_file.write_text("the movie was great\t1\nboring\t0\n", encoding="utf-8")
    options = _quick(bert_cls_checkpoint.path, tmp_path / "repo", int8=True, eval_file=eval_file)
    result = run_export(options)
    planned = planned_steps(options, applicable(options, options.formats))
    # the report is written inside the last step, so it times every step before it
    assert [s.name for s in result.report.steps] == list(planned[:-1])
    assert planned[-1] == "write repository files"
    assert {a.key for a in result.report.artifacts} == {s.key for s in applicable(options, options.formats)}


# --------------------------------------------------------------------------------------------- int8 gate


def test_int8_gate_keeps_fp32_default_unless_forced(bert_cls_checkpoint, tmp_path: Path):
    # an agreement threshold above 100 % cannot be met: the gate must fail
    failing = run_export(_quick(bert_cls_checkpoint.path, tmp_path, int8=True, min_int8_agreement=1.01))
    gate = failing.report.int8_gate
    assert gate is not None and not gate.passed and not gate.forced
    assert "onnx/int8 agreement" in gate.reasons[0]
    assert failing.config.version.default_precision == Precision.FP32
    assert failing.config.version.find("onnx", "int8") is not None  # written, just not the default

    forced = run_export(
        _quick(bert_cls_checkpoint.path, tmp_path, int8=True, min_int8_agreement=1.01, force=True)
    )
    assert forced.report.int8_gate is not None and forced.report.int8_gate.forced
    assert forced.config.version.default_precision == Precision.INT8

    passing = run_export(_quick(bert_cls_checkpoint.path, tmp_path, int8=True, min_int8_agreement=0.0))
    assert passing.report.int8_gate is not None and passing.report.int8_gate.passed
    assert passing.config.version.default_precision == Precision.INT8


def test_eval_file_accuracy_delta_gates_int8(bert_cls_checkpoint, tmp_path: Path):
    eval_file = tmp_path / "dev.tsv"
    rows = ["sentence\tlabel"] + [
        f"{t}\t{i % 2}" for i, t in enumerate(["the movie was great"] * 3 + ["boring"] * 3)
    ]
    rows += ["a man plays a guitar\tsomeone makes music\tPOSITIVE"]
    eval_file.write_text("\n".join(rows) + "\n", encoding="utf-8")
    repo = tmp_path / "repo"
    result = run_export(
        _quick(bert_cls_checkpoint.path, repo, int8=True, eval_file=eval_file, min_int8_agreement=0.0)
    )
    report = result.report
    assert report.eval is not None and report.eval["metric"] == "accuracy" and report.eval["examples"] == 7
    scores = report.eval["scores"]
    (int8,) = [a for a in report.artifacts if a.precision == Precision.INT8]
    assert int8.eval_score == scores["onnx/int8"]
    assert int8.eval_delta_points == pytest.approx((scores["pytorch/fp32"] - scores["onnx/int8"]) * 100)
    # accuracy over 7 examples moves in steps of 1/7: any drop is above 1 point, and a contrived
    # negative allowance makes even "no change" fail the gate
    strict = run_export(
        _quick(
            bert_cls_checkpoint.path,
            repo,
            int8=True,
            eval_file=eval_file,
            min_int8_agreement=0.0,
            max_int8_drop_points=-0.5,
        )
    )
    assert strict.report.int8_gate is not None and not strict.report.int8_gate.passed
    assert "loses" in strict.report.int8_gate.reasons[0]
    assert strict.config.version.default_precision == Precision.FP32


def test_conll_eval_file_for_a_tagger(bert_ner_checkpoint, tmp_path: Path):
    eval_file = tmp_path / "dev.conll"
    eval_file.write_text(
        "John B-PER\nSmith I-PER\nlives O\nin O\nParis B-LOC\n\nGoogle B-ORG\nopened O\nan O\noffice O\n",
        encoding="utf-8",
    )
    result = run_export(
        _quick(
            bert_ner_checkpoint.path, tmp_path, task="token-classification", int8=True, eval_file=eval_file
        )
    )
    assert result.report.eval is not None and result.report.eval["metric"] == "entity_f1"
    assert set(result.report.eval["scores"]) == {"pytorch/fp32", "onnx/int8"}
    assert all(0.0 <= v <= 1.0 for v in result.report.eval["scores"].values())


def test_eval_file_without_int8_is_an_error(bert_cls_checkpoint, tmp_path: Path):
    eval_file = tmp_path / "dev.tsv"
    eval_file.write_text("good\t1\n")
    args = ["--model", str(bert_cls_checkpoint.path), "--task", "text-classification", "--name", "x"]
    _assert_one_line_error(_cli(*args, "--eval-file", str(eval_file)), "add --int8")


# --------------------------------------------------------------------------------------------- architectures


def test_roberta_classifier_exports_to_onnx_and_openvino(tmp_path: Path):
    ckpt = build_roberta_classifier(tmp_path / "roberta")
    result = run_export(
        ExportOptions(
            model=str(ckpt.path),
            task="text-classification",
            name="roberta",
            repo=tmp_path / "repo",
            quiet=True,
            measure_speed=False,
        )
    )
    assert result.config.architecture == "roberta"
    assert result.config.inputs == ["input_ids", "attention_mask"]
    assert result.config.pad_token_id == 1 and result.config.max_length == 128
    assert all(a.passed for a in result.report.artifacts)
    assert {a.key for a in result.report.artifacts} == {"onnx/fp32", "onnx-optimized/fp32", "openvino/fp32"}


def test_bioes_tagger_and_fp16_ir(tmp_path: Path):
    ckpt = build_bert_bioes_tagger(tmp_path / "bioes")
    result = run_export(
        ExportOptions(
            model=str(ckpt.path),
            task="token-classification",
            name="bioes",
            repo=tmp_path / "repo",
            formats=("openvino",),
            fp16_ir=True,
            quiet=True,
            measure_speed=False,
        )
    )
    assert result.config.tag_scheme == TagScheme.BIOES
    (ir,) = result.config.version.artifacts
    assert (ir.format, ir.precision) == ("openvino", Precision.FP16)
    assert sorted(p.name for p in result.version_dir.iterdir()) == [
        "export_report.json",
        "openvino",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]


# ------------------------------------------------------------------------------ low-precision recipes


def test_int8_recipe_search_reports_every_variant(bert_cls_checkpoint, tmp_path: Path):
    from bertserve.export.quantize import NO_VNNI_RECIPES, ONNX_INT8_RECIPES
    from bertserve.runtime.cpu import CpuFeature, CpuFeatures

    vnni = CpuFeatures.probe().has(CpuFeature.VNNI)
    recipes = ONNX_INT8_RECIPES if vnni else NO_VNNI_RECIPES
    # nothing passes an agreement above 100 %: every stage of the search runs, the closest is kept
    failing = run_export(_quick(bert_cls_checkpoint.path, tmp_path, int8=True, min_int8_agreement=1.01))
    tried = failing.report.variants["onnx/int8"]
    assert [v.name for v in tried] == [r.name for r in recipes]
    assert sum(v.chosen for v in tried) == 1 and not any(v.passed for v in tried)
    assert all(0.0 <= v.agreement <= 1.0 and v.speedup is not None for v in tried)
    gate = failing.config.version.find("onnx", "int8").gate
    assert gate is not None and not gate.passed and gate.reasons and gate.min_agreement == 1.01
    # only the chosen candidate stays, under the artifact's own name
    assert sorted(p.name for p in failing.version_dir.glob("model*.onnx")) == [
        "model.int8.onnx",
        "model.onnx",
        "model.ort.onnx",
    ]
    assert failing.config.version.default_precision == Precision.FP32

    passing = run_export(_quick(bert_cls_checkpoint.path, tmp_path, int8=True, min_int8_agreement=0.0))
    tried = passing.report.variants["onnx/int8"]
    first_stage = [r.name for r in recipes if r.stage == recipes[0].stage]
    assert [v.name for v in tried] == first_stage  # the first stage passed: no sensitivity search
    (chosen,) = [v for v in tried if v.chosen]
    assert chosen.speedup == max(v.speedup or 0.0 for v in tried)  # the fastest that passed
    int8 = passing.config.version.find("onnx", "int8")
    assert int8.gate is not None and int8.gate.passed and int8.gate.variant.startswith(chosen.name)
    assert int8.gate.needs == (["vnni"] if vnni else [])
    report = json.loads((passing.version_dir / "export_report.json").read_text())
    assert report["variants"]["onnx/int8"][0]["name"] == tried[0].name
    assert set(report["cpu"]) == {"features", "flags", "known"}


def test_bf16_is_gated_like_int8(bert_cls_checkpoint, tmp_path: Path):
    import openvino as ov

    from bertserve.runtime.cpu import CpuFeature, CpuFeatures
    from bertserve.runtime.openvino import asks_bf16_inference

    options = _quick(bert_cls_checkpoint.path, tmp_path, bf16=True, int8=True, min_int8_agreement=0.0)
    result = run_export(dataclasses_replace(options, formats=("onnx", "openvino")))
    bf16 = result.config.version.find("openvino", "bf16")
    fp32 = result.config.version.find("openvino", "fp32")
    assert bf16 is not None and fp32 is not None and bf16.files == fp32.files  # the same IR
    assert bf16.gate is not None and bf16.gate.needs == ["bf16"]
    # NNCF's recipes: the first passes a 0 % bound at once and is the one kept; on a bf16 CPU that
    # is the FFN-output recipe run in bf16, which the IR itself asks the runtime for
    has_bf16 = CpuFeatures.probe().has(CpuFeature.BF16)
    (nncf,) = result.report.variants["openvino/int8"]
    expected = "nncf-transformer-ffn-out-bf16" if has_bf16 else "nncf-transformer"
    assert nncf.name == expected and nncf.chosen and nncf.passed
    int8 = result.config.version.find("openvino", "int8")
    assert int8 is not None and int8.gate is not None
    assert int8.gate.needs == (["vnni", "bf16"] if has_bf16 else ["vnni"])
    ir = ov.Core().read_model(str(result.version_dir / int8.main_file))
    assert asks_bf16_inference(ir) == has_bf16
    if has_bf16:
        assert bf16.gate.passed
    else:
        assert not bf16.gate.passed and "not measured" in bf16.gate.reasons[0]


def test_eval_file_scores_the_nncf_int8_ir_with_its_weights(bert_cls_checkpoint, tmp_path: Path):
    """The gate opens the int8 IR as the service would: with its .bin listed and verified."""
    eval_file = tmp_path / "dev.tsv"
    eval_file.write_text("the movie was great\t1\nboring\t0\n", encoding="utf-8")
    options = dataclasses_replace(
        _quick(bert_cls_checkpoint.path, tmp_path / "repo", int8=True, eval_file=eval_file),
        formats=("onnx", "openvino"),
    )
    result = run_export(options)
    (ir,) = [a for a in result.report.artifacts if a.key == "openvino/int8"]
    assert ir.eval_delta_points is not None
    artifact = result.config.version.find(ArtifactFormat.OPENVINO, Precision.INT8)
    assert artifact is not None
    assert set(artifact.files) == {"openvino-int8/model.xml", "openvino-int8/model.bin"}
