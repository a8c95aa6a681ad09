"""Export: trained runs → a model bundle the runtime reads (ONNX, INT8, TensorRT engines), with parity checks.

``triage export RUN... --out BUNDLE`` (:mod:`export.cli`) drives :func:`export.pipeline.export_bundle`;
``triage export-saliency --run RUN --bundle BUNDLE`` drives :func:`export.saliency.add_to_bundle`. Both run
the same steps (:mod:`export.steps`: graph, card entry, parity, INT8, TensorRT, provenance):

* :mod:`export.runs`        read the run folders (``training.run_format``), rebuild and load the networks
* :mod:`export.onnx_export` the ONNX graphs (opset ≥ 17, dynamic batch; classifier → logit + CAM,
  saliency → map with the run's map activation + logit)
* :mod:`export.images`      the validation / calibration images, read and prepared by the runtime's code
* :mod:`export.parity`      torch vs ONNX Runtime (or INT8 / TensorRT) figures and decision identity
* :mod:`export.quantize`    INT8 static quantisation for the CPU (onnxruntime.quantization)
* :mod:`export.tensorrt_build` TensorRT engines (FP16 / INT8 with a calibrator) on a GPU machine
* :mod:`export.triton`      a Triton Inference Server model repository
* :mod:`export.thresholds`  where every decision threshold of the card comes from

This package needs the training extra (torch); the runtime (``triage/``) never imports it.
"""
