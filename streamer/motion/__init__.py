"""The motion pipeline: shots -> optical flow -> global (camera) motion -> superpixels -> voting ->
prune -> trimap (pipeline.MotionPipeline runs them in order); patches tracks patch pairs on the flow."""
