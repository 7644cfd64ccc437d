"""``mossnet convert``: a Llama teacher in, a MossNet run directory out.

    OUT/
      mossnet-run.json   {"command": "convert", ...}
      model/             config.json, model.safetensors, the auto_map shims, the teacher's
                         tokenizer, README.md (model card), SHA256SUMS
      logs/conversion.json   options, per-layer calibration choices, per-layer relative errors

Order of work, so that a refused teacher or bad option writes nothing at all: read and check the
teacher's config, its tokenizer and the calibration text; only then claim OUT. The model and logs
are written into a temporary folder inside OUT and moved into place together at the end
(:mod:`mossnet.rundir.atomic`), so an interrupted conversion never leaves a model that looks
complete.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mossnet.errors import DataError

from . import llama
from .init import CalibrationGrid, LayerCalibration, calibrate_layer, init_new_parts
from .report import capture_teacher, layer_errors

CONVERSION_LOG = "conversion.json"


@dataclass(frozen=True)
class ConvertOptions:
    """experts_per_token: k (None = every head); state_update: "all" | "routed";
    calibration_text: a corpus name of :mod:`mossnet.data.corpora` (its train split calibrates,
    its val split measures) or a UTF-8 text file (first 90% / last 10%); sequences x seq_len
    tokens in each batch."""

    experts_per_token: int | None = None
    state_update: str = "all"
    calibration_text: str = "shakespeare"
    sequences: int = 4
    seq_len: int = 256
    seed: int = 0
    grid: CalibrationGrid = CalibrationGrid()


def convert_teacher(teacher_path, out, options: ConvertOptions = ConvertOptions(), *, device="cpu",
                    force: bool = False, made_by: str = "mossnet convert",
                    log: Callable[[str], None] = print) -> Path:
    """Convert the teacher at ``teacher_path`` (directory or .gguf) into the run directory
    ``out``; returns ``out/model``. Raises a MossNetError (one line) on every refusal."""
    from mossnet.rundir import claim_output_dir, write_marker

    source = llama.TeacherSource.of(teacher_path)
    teacher_cfg = llama.load_teacher_config(source)
    llama.check_teacher_config(teacher_cfg)
    k = llama.check_options(teacher_cfg, options.experts_per_token, options.state_update)
    config = llama.mossnet_config_for(teacher_cfg, k, options.state_update)
    tokenizer = llama.load_teacher_tokenizer(source)
    from mossnet.rundir.integrity import check_tokenizer_fits

    check_tokenizer_fits(tokenizer, config.vocab_size, f"teacher {source}")
    calib_text, heldout_text = calibration_texts(options.calibration_text)

    out = claim_output_dir(out, force=force, owned=is_convert_dir,
                           owned_refusal="already holds a conversion; pass --force to replace it",
                           read_dirs={"teacher": source.directory})
    write_marker(out, "convert")
    started = time.time()
    log(f"loading the teacher {source}")
    teacher = llama.load_teacher(source).to(device)
    torch.manual_seed(options.seed)
    student = build_student(teacher, config, options.seed).to(device)
    calib_ids = sample_windows(tokenizer, calib_text, options.sequences, options.seq_len, options.seed)
    heldout_ids = sample_windows(tokenizer, heldout_text, options.sequences, options.seq_len, options.seed + 1)
    log(f"calibrating {config.n_layers} layers on {calib_ids.numel():,} tokens")
    choices = calibrate(teacher, student, calib_ids.to(device), options.grid, log)
    heldout = layer_errors(teacher, student, heldout_ids.to(device))
    record = {
        "teacher": str(source), "made_by": made_by, "seconds": round(time.time() - started, 1),
        "experts_per_token": k, "state_update": options.state_update,
        "calibration_text": options.calibration_text, "sequences": options.sequences, "seq_len": options.seq_len,
        "seed": options.seed, "grid": {"half_lives": [None if math.isinf(h) else h for h in options.grid.half_lives],
                                       "feature_rms": list(options.grid.feature_rms), "ridge": options.grid.ridge},
        "layers": [c.to_json() | {"heldout_relative_error": e} for c, e in zip(choices, heldout)],
        "calibration_error_mean": sum(c.error for c in choices) / len(choices),
        "heldout_error_mean": sum(heldout) / len(heldout), "heldout_error_max": max(heldout),
    }
    log(f"per-layer relative error on held-out text: mean {record['heldout_error_mean']:.3f}, "
        f"max {record['heldout_error_max']:.3f}")
    save_run(out, student.cpu(), tokenizer, record, made_by)
    return out / "model"


def build_student(teacher, config, seed: int):
    """The MossNet of ``config`` with the teacher's exact parts copied and the new parts set
    (before calibration), in fp32."""
    from mossnet import MossNetForCausalLM

    student = MossNetForCausalLM(config).float().eval()
    llama.copy_exact_parts(teacher, student)
    generator = torch.Generator().manual_seed(seed)
    for block in student.model.layers:
        init_new_parts(block.mixer, config.initializer_range, generator)
    return student.to(next(teacher.parameters()).device)


@torch.no_grad()
def calibrate(teacher, student, input_ids: torch.Tensor, grid: CalibrationGrid = CalibrationGrid(),
              log: Callable[[str], None] = lambda _: None) -> list[LayerCalibration]:
    """Calibrate every layer's mixer on the teacher's own activations for ``input_ids``."""
    acts = capture_teacher(teacher, input_ids, heads=True)
    choices = []
    for i, block in enumerate(student.model.layers):
        u = block.mixer_norm(acts.inputs[i])
        choice = calibrate_layer(block.mixer, u, acts.heads[i], acts.attention[i], grid)
        log(f"  layer {i}: relative error {choice.error:.3f} on the calibration batch")
        choices.append(choice)
    return choices


def save_run(out: Path, student, tokenizer, record: dict, made_by: str) -> None:
    """Write model/ and logs/ into a temporary folder in ``out`` and move them in together."""
    from mossnet.models.parameter_count import parameter_counts
    from mossnet.rundir import LOGS, MODEL
    from mossnet.rundir import atomic
    from mossnet.rundir.integrity import write_checksums
    from mossnet.rundir.model_card import write_model_card

    tmp = atomic.begin_save(out)
    try:
        model_dir = tmp / MODEL
        student.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        results = {"mixer vs teacher attention, relative error (step 0)": {
            "held-out mean": record["heldout_error_mean"], "held-out max": record["heldout_error_max"],
            "calibration mean": record["calibration_error_mean"]}}
        card = write_model_card(model_dir, config=student.config, params=parameter_counts(student),
                                made_by=made_by, results=results)
        with open(card, "a") as f:
            f.write(conversion_section(record))
        write_checksums(model_dir)
        (tmp / LOGS).mkdir()
        (tmp / LOGS / CONVERSION_LOG).write_text(json.dumps(record, indent=2) + "\n")
        atomic.commit_save(out, tmp, parts=(MODEL, LOGS))
    except BaseException:
        atomic.abort_save(tmp)
        raise


def conversion_section(record: dict) -> str:
    """The model card's account of the conversion (appended after the standard card)."""
    return "\n".join([
        "## Conversion", "",
        f"Converted from the attention model `{record['teacher']}` by `mossnet convert`: one SSM expert per "
        f"query head, {record['experts_per_token']} experts per token, state_update `{record['state_update']}`. "
        "Embeddings, norms, MLPs and the LM head are the teacher's; the SSM experts' C, B, x and output "
        "projections are its q, k, v and o projections; the rest was initialised and calibrated on "
        f"{record['sequences']} x {record['seq_len']} tokens of `{record['calibration_text']}` (docs/CONVERSION.md "
        "in the MossNet repository). RoPE and the softmax are not carried over: the model needs distillation "
        "before it is useful.", "",
        f"Relative error of each layer's mixer against the teacher's attention output, on the teacher's own "
        f"layer inputs and held-out text: mean {record['heldout_error_mean']:.3f}, "
        f"max {record['heldout_error_max']:.3f}.", ""])


def is_convert_dir(path: Path) -> bool:
    """A run directory written by ``mossnet convert`` (its marker says so)."""
    from mossnet.rundir import MARKER

    try:
        return json.loads((Path(path) / MARKER).read_text()).get("command") == "convert"
    except (OSError, ValueError, AttributeError):
        return False


def calibration_texts(source: str) -> tuple[str, str]:
    """(calibration text, held-out text) from a corpus name or a text file (see ConvertOptions)."""
    path = Path(source)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read the calibration text {path}: {err}") from None
        cut = int(len(text) * 0.9)
        calib, heldout = text[:cut], text[cut:]
    else:
        from mossnet.data.corpora import corpus_names, load_corpus

        if source not in corpus_names():
            raise DataError(f"--calibration-text {source!r} is neither a file nor a corpus "
                            f"({', '.join(corpus_names())})")
        splits = load_corpus(source)
        calib = "\n\n".join(d.text for d in splits["train"])
        heldout = "\n\n".join(d.text for d in splits["val"])
    if not calib.strip() or not heldout.strip():
        raise DataError(f"the calibration text {source} is empty")
    return calib, heldout


def sample_windows(tokenizer, text: str, sequences: int, seq_len: int, seed: int) -> torch.Tensor:
    """``sequences`` windows of ``seq_len`` tokens at seeded random places of ``text``:
    (sequences, seq_len) int64. Raises DataError when the text is too short."""
    generator = torch.Generator().manual_seed(seed)
    chars = seq_len * 8  # comfortably more characters than seq_len tokens need
    rows = []
    for _ in range(sequences):
        start = int(torch.randint(max(1, len(text) - chars), (1,), generator=generator))
        ids = tokenizer(text[start:start + chars], add_special_tokens=False)["input_ids"][:seq_len]
        if len(ids) < seq_len:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) < seq_len:
                raise DataError(f"the calibration text has {len(ids)} tokens; need at least --seq-len {seq_len}")
            start = int(torch.randint(len(ids) - seq_len + 1, (1,), generator=generator))
            ids = ids[start:start + seq_len]
        rows.append(ids)
    return torch.tensor(rows, dtype=torch.long)
