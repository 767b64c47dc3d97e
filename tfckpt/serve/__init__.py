"""Beside training: following a run as it commits (`watch`), evaluating each
checkpoint (`SidecarEvaluator`) and exporting for TF Serving (`ServingExport`)."""
