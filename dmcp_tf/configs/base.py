"""The defaults of every config key: `base_config()`, which the config files start from.

Plain values only (no TensorFlow, nothing else of dmcp_tf): reading a config file stays
light, and `dmcp_tf.prune` takes its fine-tuning recipe from the same defaults.
`dmcp_tf.run.config.validate` checks a config against the names the library defines.
"""

import ml_collections


def base_config():
    """Defaults: the Fashion-MNIST run that `python main.py` performs."""
    c = ml_collections.ConfigDict()
    c.name = "fashion_mnist"
    c.seed = 0
    c.checkpoints_to_keep = 3     # newest checkpoints kept per training step (search, retrain)
    c.mixed_precision = "float32" # Keras dtype policy of the run: "mixed_float16" (GPUs, loss scaling) or
                                  # "mixed_bfloat16" (TPUs, recent GPUs and CPUs); exports are float32

    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist"
    c.data.data_dir = ""          # empty: the data set's default location
    c.data.batch_size = 128       # global batch, split over replicas
    c.data.train_limit = 0        # 0: every training example
    c.data.test_limit = 0
    c.data.image_size = 0         # 0: the data set's native size
    c.data.augment = True
    c.data.preprocess = "normalize"  # or "raw": pixels 0-255, for a model with its own Rescaling (--model sets it)

    c.model = ml_collections.ConfigDict()
    c.model.name = "fashion_resnet"
    c.model.gate_kind = "markov"  # or "bernoulli" (the paper's ablation)
    c.model.options = ml_collections.ConfigDict()  # keyword arguments of the model builder
    c.model.path = ""             # --model: a trained .keras classifier, or keras.applications.<Name> (run/user_model.py)
    c.model.exclude = ""          # --model: comma-separated layer names or regular expressions kept whole

    c.search = ml_collections.ConfigDict()
    c.search.budget = "0.5x"      # MACs "210M", "2.8G", a fraction "0.5x"; "params:1.5M", "params:0.4x";
                                  # "latency:3.2ms", "latency:0.5x" with a latency table:
    c.search.latency_table = ""   # latency_table.json (--mode=latency_table writes one; dmcp_tf/deploy/latency.py)
    c.search.latency_quantization = "float32"  # which of the table's times a latency budget means ("int8")
    c.search.epochs = 2
    c.search.steps_per_epoch = 0  # 0: one pass over the training data
    c.search.warmup_fraction = 0.5
    c.search.init = "authors"     # where the gates start: "authors" (alpha=0), "full", "budget" (search_init.py)
    c.search.initial_weights = "" # a trained model (.keras) whose weights the search starts from
    c.search.sort_initial_channels = True  # with initial_weights: order each layer's channels by L1 norm first
    c.search.train_weights = True  # False (with initial_weights): the gates learn on frozen trained weights,
                                   # no warm-up, every step projected onto the budget (DMCPModel
                                   # project_to_budget); then retrain.from_scratch=False fine-tunes them
    c.search.learning_rate = 0.1
    c.search.warmup_epochs = 0.0  # linear learning-rate warm-up ...
    c.search.warmup_start_learning_rate = 0.0  # ... from this rate to `learning_rate`
    c.search.min_learning_rate = 0.0  # the cosine's floor (the authors' min_lr: 0.08 on ImageNet)
    c.search.weight_decay = 1e-4
    c.search.label_smoothing = 0.0
    c.search.arch_label_smoothing = 0.0  # in the architecture stage's cross-entropy
    c.search.arch_learning_rate = 0.5
    c.search.arch_final_learning_rate = 0.1
    c.search.budget_weight = 0.1
    c.search.budget_weight_growth = 0.0  # >0: the budget weight grows while E[cost] > budget (DMCPModel)
    c.search.uniform_decay = 0.9999
    c.search.uniform_decay_every = 10
    c.search.checkpoint_every_steps = 100  # and at every epoch end; 0: epoch ends only
    c.search.trajectory_every_steps = 10   # E[MACs]/budget and gate widths logged (TensorBoard, plot)

    c.sample = ml_collections.ConfigDict()
    c.sample.statistics_samples = 3000  # direct samples for the MACs histogram (Fig. 6)
    c.sample.direct_samples = 3         # budget-constrained direct samples saved beside the ES result
    c.sample.tolerance = 0.01
    c.sample.round_to = 0               # >1: round kept channels to a multiple (faster kernels on phones)
    c.sample.fit_to_budget = False      # scale the expected-sampling widths together to meet the budget (authors: no)
    c.sample.over_budget = 0.05         # a sampled structure costing more than (1 + this) x the budget stops the run
    c.sample.calibration_batches = 20   # batch-norm re-estimation before evaluating a sub-network

    c.retrain = ml_collections.ConfigDict()
    c.retrain.from_scratch = True   # as the paper; False fine-tunes the supernet's weights (worse at
                                    # equal epochs on Fashion-MNIST: docs/benchmarks.md, section 3)
    c.retrain.inherit = "supernet"  # with from_scratch=False, the weights fine-tuned: "supernet" (searched) or
                                    # "initial_weights": search.initial_weights, channels sorted by L1 norm
                                    # (L1-norm pruning at DMCP's widths: dmcp_l1 in docs/benchmarks.md)
    c.retrain.epochs = 3
    c.retrain.steps_per_epoch = 0
    c.retrain.learning_rate = 0.05
    c.retrain.weight_decay = 1e-4
    c.retrain.weight_decay_type = "decoupled"  # Keras' weight decay, or "coupled": the authors' L2 term
    c.retrain.label_smoothing = 0.0
    c.retrain.checkpoint_every_steps = 100
    c.retrain.calibrate_after = False  # re-estimate batch-norm statistics (sample.calibration_batches of augmented
                                       # training batches) after training: for moving averages that lag a short
                                       # training (momentum 0.999)
    c.retrain.compare_uniform = False  # also train the uniform-width network of the slim model's MACs, the same
                                       # way (from scratch, or fine-tuned from the same inherited weights)

    c.export = ml_collections.ConfigDict()
    c.export.quantizations = "float32,int8"
    c.export.representative_images = 100
    c.export.parity_images = 500
    c.export.latency_runs = 50
    c.export.latency_threads = 1
    c.lock()
    return c
