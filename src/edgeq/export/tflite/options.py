"""Builders for the TFLite builtin-options tables the writer uses (one function per table)."""
from __future__ import annotations

import flatbuffers
import tflite

from edgeq.export.tflite.flatbuf import Options

BO = tflite.BuiltinOptions
PADDING = {"SAME": tflite.Padding.SAME, "VALID": tflite.Padding.VALID}
_NONE = tflite.ActivationFunctionType.NONE


def conv2d(padding: str, stride_hw: tuple[int, int], dilation_hw: tuple[int, int]) -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.Conv2DOptionsStart(b)
        tflite.Conv2DOptionsAddPadding(b, PADDING[padding])
        tflite.Conv2DOptionsAddStrideH(b, stride_hw[0])
        tflite.Conv2DOptionsAddStrideW(b, stride_hw[1])
        tflite.Conv2DOptionsAddDilationHFactor(b, dilation_hw[0])
        tflite.Conv2DOptionsAddDilationWFactor(b, dilation_hw[1])
        tflite.Conv2DOptionsAddFusedActivationFunction(b, _NONE)
        return tflite.Conv2DOptionsEnd(b)

    return Options(BO.Conv2DOptions, build)


def depthwise_conv2d(
    padding: str, stride_hw: tuple[int, int], dilation_hw: tuple[int, int], multiplier: int
) -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.DepthwiseConv2DOptionsStart(b)
        tflite.DepthwiseConv2DOptionsAddPadding(b, PADDING[padding])
        tflite.DepthwiseConv2DOptionsAddStrideH(b, stride_hw[0])
        tflite.DepthwiseConv2DOptionsAddStrideW(b, stride_hw[1])
        tflite.DepthwiseConv2DOptionsAddDepthMultiplier(b, multiplier)
        tflite.DepthwiseConv2DOptionsAddDilationHFactor(b, dilation_hw[0])
        tflite.DepthwiseConv2DOptionsAddDilationWFactor(b, dilation_hw[1])
        tflite.DepthwiseConv2DOptionsAddFusedActivationFunction(b, _NONE)
        return tflite.DepthwiseConv2DOptionsEnd(b)

    return Options(BO.DepthwiseConv2DOptions, build)


def transpose_conv(padding: str, stride_hw: tuple[int, int]) -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.TransposeConvOptionsStart(b)
        tflite.TransposeConvOptionsAddPadding(b, PADDING[padding])
        tflite.TransposeConvOptionsAddStrideH(b, stride_hw[0])
        tflite.TransposeConvOptionsAddStrideW(b, stride_hw[1])
        tflite.TransposeConvOptionsAddFusedActivationFunction(b, _NONE)
        return tflite.TransposeConvOptionsEnd(b)

    return Options(BO.TransposeConvOptions, build)


def pool2d(padding: str, stride_hw: tuple[int, int], filter_hw: tuple[int, int]) -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.Pool2DOptionsStart(b)
        tflite.Pool2DOptionsAddPadding(b, PADDING[padding])
        tflite.Pool2DOptionsAddStrideH(b, stride_hw[0])
        tflite.Pool2DOptionsAddStrideW(b, stride_hw[1])
        tflite.Pool2DOptionsAddFilterHeight(b, filter_hw[0])
        tflite.Pool2DOptionsAddFilterWidth(b, filter_hw[1])
        tflite.Pool2DOptionsAddFusedActivationFunction(b, _NONE)
        return tflite.Pool2DOptionsEnd(b)

    return Options(BO.Pool2DOptions, build)


def add() -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.AddOptionsStart(b)
        tflite.AddOptionsAddFusedActivationFunction(b, _NONE)
        # int16 ADD with arbitrary (not power-of-two) scales needs this flag off; int8 ignores it.
        tflite.AddOptionsAddPotScaleInt16(b, False)
        return tflite.AddOptionsEnd(b)

    return Options(BO.AddOptions, build)


def sub() -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.SubOptionsStart(b)
        tflite.SubOptionsAddFusedActivationFunction(b, _NONE)
        tflite.SubOptionsAddPotScaleInt16(b, False)
        return tflite.SubOptionsEnd(b)

    return Options(BO.SubOptions, build)


def mul() -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.MulOptionsStart(b)
        tflite.MulOptionsAddFusedActivationFunction(b, _NONE)
        return tflite.MulOptionsEnd(b)

    return Options(BO.MulOptions, build)


def concatenation(axis: int) -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.ConcatenationOptionsStart(b)
        tflite.ConcatenationOptionsAddAxis(b, axis)
        tflite.ConcatenationOptionsAddFusedActivationFunction(b, _NONE)
        return tflite.ConcatenationOptionsEnd(b)

    return Options(BO.ConcatenationOptions, build)


def split(num_splits: int) -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.SplitOptionsStart(b)
        tflite.SplitOptionsAddNumSplits(b, num_splits)
        return tflite.SplitOptionsEnd(b)

    return Options(BO.SplitOptions, build)


def strided_slice() -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.StridedSliceOptionsStart(b)
        return tflite.StridedSliceOptionsEnd(b)

    return Options(BO.StridedSliceOptions, build)


def reshape(new_shape: tuple[int, ...]) -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.ReshapeOptionsStartNewShapeVector(b, len(new_shape))
        for d in reversed(new_shape):
            b.PrependInt32(int(d))
        shape = b.EndVector()
        tflite.ReshapeOptionsStart(b)
        tflite.ReshapeOptionsAddNewShape(b, shape)
        return tflite.ReshapeOptionsEnd(b)

    return Options(BO.ReshapeOptions, build)


def transpose() -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.TransposeOptionsStart(b)
        return tflite.TransposeOptionsEnd(b)

    return Options(BO.TransposeOptions, build)


def softmax(beta: float = 1.0) -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.SoftmaxOptionsStart(b)
        tflite.SoftmaxOptionsAddBeta(b, beta)
        return tflite.SoftmaxOptionsEnd(b)

    return Options(BO.SoftmaxOptions, build)


def batch_matmul(adj_x: bool = False, adj_y: bool = False) -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.BatchMatMulOptionsStart(b)
        tflite.BatchMatMulOptionsAddAdjX(b, adj_x)
        tflite.BatchMatMulOptionsAddAdjY(b, adj_y)
        tflite.BatchMatMulOptionsAddAsymmetricQuantizeInputs(b, False)
        return tflite.BatchMatMulOptionsEnd(b)

    return Options(BO.BatchMatMulOptions, build)


def resize_nearest() -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.ResizeNearestNeighborOptionsStart(b)
        tflite.ResizeNearestNeighborOptionsAddAlignCorners(b, False)
        tflite.ResizeNearestNeighborOptionsAddHalfPixelCenters(b, False)
        return tflite.ResizeNearestNeighborOptionsEnd(b)

    return Options(BO.ResizeNearestNeighborOptions, build)


def pad() -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.PadOptionsStart(b)
        return tflite.PadOptionsEnd(b)

    return Options(BO.PadOptions, build)


def padv2() -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.PadV2OptionsStart(b)
        return tflite.PadV2OptionsEnd(b)

    return Options(BO.PadV2Options, build)


def quantize() -> Options:
    def build(b: flatbuffers.Builder) -> int:
        tflite.QuantizeOptionsStart(b)
        return tflite.QuantizeOptionsEnd(b)

    return Options(BO.QuantizeOptions, build)
