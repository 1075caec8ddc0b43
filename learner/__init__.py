"""The learner: a ConvNet that learns, from single frames, the masks that motion produced.

Modules (each one job; the public API in brief):
  config      LearnerConfig, the `learner:` section of the YAML config
  model       build_model(cfg.model, crop_size, cfg.heads) -> MaskNet: .features(x) pyramid, .heads["mask"]
  heads       the multi-task heads (learner.heads): .heads["embedding"], .heads["segments"]; their
              losses in embedding_loss (triplet ranking) and grouping_loss (S3-CNN affine / entropy)
  crops       make_crops(...): jittered boxes around pseudo-labelled segments, flips, colour jitter
  loss        masked_bce(logits, trimap): BCE on positive and negative trimap pixels only
  train       Trainer (THE training step), fit (the loop), resolve_device
  checkpoint  save_checkpoint / load_checkpoint / find_resume: atomic, last N kept, last.pt
  samples     RingFeed (online: the daemon's buffer), OfflineFeed (`motionmask train` on files)
  predict     Predictor: a checkpoint -> per-pixel foreground probability of full frames
  evaluate    evaluate_student(checkpoint, clips_dir): student vs teacher IoU on synthetic clips

Kept light on purpose (no imports here): the offline streamer process imports learner.samples
and must not pay for torch.
"""
