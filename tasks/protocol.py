"""Names the ServerApp and the ClientApp agree on in their messages (config and metric keys).

Both sides import them from here, so that neither imports the other.
"""

# Config key: the hospital keeps its own normalisation layers (FedBN).
KEEP_LOCAL_NORM = "keep-local-norm"
# Metric key every training reply carries with value 1: the weight of a uniform average
# (central DP needs one hospital to move the average by at most C / n).
UNIFORM_WEIGHT = "uniform-weight"
# Config key (secure aggregation): the model's weight names, JSON, in the order of the
# positional arrays SecAgg+ sums.
WEIGHT_KEYS = "weight-keys"
# Config key of a train request: first validate the incoming global model on the hospital's
# val patients (one message a round carries both; the reply's metrics then include the
# validation's, each key prefixed with GLOBAL_VAL).
VALIDATE_GLOBAL = "validate-global"
GLOBAL_VAL = "global-val-"
# Metric-key prefix of a hospital's own model's validation (Ditto's personal model after
# this round, or what the gated fine-tuning kept), filed under the round that made it.
PERSONAL_VAL = "personal-val-"
# Config key: the run's identity, the same across resumptions (hex). A hospital keeps its
# personal model for the run under this name.
FEDERATION_ID = "federation-id"
# Config key of a train request: the precision of the reply's weights, "float32" (the
# weights) or "float16" (the update: new weights minus those the request carried, in
# float16; tasks.packing.pack_reply).
UPDATE_PRECISION = "update-precision"
