"""Re-quantize a GGUF model file with gguf-py (llama.cpp's own Python library, MIT).

The local LLM ships as one file, SmolLM2-135M-Instruct in Q4_1, for which llama.cpp's CPU
backend has its slowest kernels: on one thread the first token comes in 0.14 s from Q8_0 and
0.09 s from Q4_0 against 0.22 s (bench/results/llm-weights.md). Q8_0 holds Q4_1's values
almost exactly; Q4_0 loses the offset of each block and answers worse (brain-weights-*-s4.md).
The weights are converted once, on this machine, from the shipped file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines import EngineError

TARGETS = ("q4_0", "q8_0")  # 2-D weights go to the target; vectors (norms) stay float32
BLOCK = 32  # Q4_0 and Q8_0 quantize rows in blocks of 32 values


def _field_value(field: Any) -> tuple[Any, Any, Any]:
    """(value, type, sub-type) of one metadata field, as GGUFWriter.add_key_value takes them."""
    from gguf import GGUFValueType

    vtype = field.types[0]
    if vtype == GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data], vtype, sub
        return [field.parts[i][0].item() for i in field.data], vtype, sub
    if vtype == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", "surrogateescape"), vtype, None
    return field.parts[field.data[0]][0].item(), vtype, None


def requantize(src: Path, dst: Path, target: str, keep: tuple[str, ...] = ("token_embd.weight",)) -> dict[str, int]:
    """Write ``src`` to ``dst`` with every 2-D weight in ``target`` (``q4_0`` or ``q8_0``).

    ``keep``: tensors copied in their shipped type (the embedding, which SmolLM2 also uses as
    its output layer: the one matrix whose precision every generated token reads). Returns
    the count of tensors per written type.
    """
    import numpy as np

    try:
        from gguf import GGMLQuantizationType as Q
        from gguf import GGUFReader, GGUFWriter
        from gguf.quants import dequantize, quantize
    except ImportError as exc:
        raise EngineError(
            f"making the local LLM's {target} weights needs the gguf package: pip install gguf "
            "(or LLM__WEIGHTS=q4_1, the shipped file)"
        ) from exc
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    qtype = Q.Q4_0 if target == "q4_0" else Q.Q8_0
    reader = GGUFReader(src)
    arch = _field_value(reader.fields["general.architecture"])[0]
    writer = GGUFWriter(dst, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value, vtype, sub = _field_value(field)
        writer.add_key_value(name, value, vtype, sub_type=sub)
    counts: dict[str, int] = {}
    for t in reader.tensors:
        if t.name in keep or t.tensor_type == Q.F32 or len(t.shape) < 2:
            out, kind = np.asarray(t.data), t.tensor_type
            shape = None if kind not in (Q.F32, Q.F16) else out.shape
        else:
            data = dequantize(t.data, t.tensor_type)
            kind = qtype if data.shape[-1] % BLOCK == 0 else Q.F16
            out = quantize(data, kind) if kind != Q.F16 else data.astype(np.float16)
            shape = None if kind != Q.F16 else out.shape
        counts[kind.name] = counts.get(kind.name, 0) + 1
        writer.add_tensor(t.name, out, raw_shape=shape, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts
