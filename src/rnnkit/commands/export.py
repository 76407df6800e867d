"""The options of ``rnnkit export DIR`` (every task that can be exported; see
:mod:`rnnkit.export`)."""

from __future__ import annotations

import argparse

from torch import nn

from rnnkit.commands.common import check_run_arguments
from rnnkit.export import OPSET, OPSET_MAX, OPSET_MIN, export_model


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """``--onnx F`` / ``--torchscript F``, ``--opset``, ``--no-check``."""
    parser.add_argument("--onnx", metavar="F.onnx", help="write an ONNX model")
    parser.add_argument("--torchscript", metavar="F.pt", help="write a TorchScript model")
    parser.add_argument("--opset", type=int, default=OPSET,
                        help=f"ONNX opset, {OPSET_MIN} to {OPSET_MAX} (default {OPSET})")
    parser.add_argument("--no-check", action="store_true",
                        help="do not run the ONNX file in onnxruntime against PyTorch")


def export_command(args: argparse.Namespace, model: nn.Module, task: str) -> int:
    """``rnnkit export DIR ...`` for a loaded ``model`` of ``task``."""
    check_run_arguments(args)
    export_model(model, task, onnx=args.onnx, torchscript=args.torchscript, opset=args.opset,
                 check=not args.no_check)
    return 0
