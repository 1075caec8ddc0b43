"""The learner: a ConvNet that learns, from single frames, the masks that motion produced.

Modules (each one job; the public API in brief):
  config      LearnerConfig, the `learner:` section of the YAML config
  layers      conv_bn, BasicBlock, upsample: the blocks backbones and heads share
  model       build_model(cfg.model, crop_size, cfg.heads) -> MaskNet: .features(x) pyramid, .heads["mask"]
  heads       the multi-task heads (learner.heads): .heads["embedding"], .heads["segments"]; their
              losses in embedding_loss (triplet ranking) and grouping_loss (S3-CNN affine / entropy)
  crops       make_crops(...): jittered boxes around pseudo-labelled segments, flips, colour jitter;
              crop_flow: the flow through the same boxes (the segments loss)
  loss        masked_bce(logits, trimap): BCE on positive and negative trimap pixels only
  train       Trainer (THE training step: queue_step + update), fit (the loop)
  device      resolve_device, bf16 or float32, torch's CPU threads next to the streamer
  progress    train.jsonl lines and the progress display (a bar on a terminal, log lines in a file)
  checkpoint  save_checkpoint / load_checkpoint / find_resume: atomic, last N kept, last.pt; CheckpointClock
  samples     RingFeed (online: the daemon's buffer), OfflineFeed (`motionmask train` on files)
  held_back   HeldBack: a feed without the export holdout's samples
  pairs       tracked-patch pairs for the embedding head (PairFeed, RingPairFeed)
  appetite    Appetite: samples drawn per sample inserted (`motionmask learn`)
  bootstrap   Bootstrapper: rounds that refine the buffer's labels with the student's predictions
  distributed data-parallel ranks (DDP): init, wrap, share_feed, agree
  predict     Predictor: a checkpoint -> per-pixel foreground probability of full frames
  evaluate    evaluate_student(checkpoint, clips_dir): student vs teacher IoU on synthetic clips

Kept light on purpose (no imports here): the offline streamer process imports learner.samples
and must not pay for torch.
"""
