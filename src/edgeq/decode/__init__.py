"""Family- and target-neutral decode primitives: quantized fields, thresholds, NMS, masks."""
