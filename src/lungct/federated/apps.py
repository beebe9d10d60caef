"""Flower adapter, site side (Message API): a ClientApp that runs
:func:`lungct.federated.task.local_train` on its own site's slices and sends back only weights, the
number of slices and the training loss. The same app runs in Flower's simulation engine and under a
SuperNode in a deployment (`lungct federated client`).

Run settings travel in the training message's ConfigRecord: ``train-config`` (the coordinator's
TrainConfig as JSON), ``local-epochs``, ``proximal-mu`` (FedProx, 0 = off), ``fedbn`` (keep this site's
batch-norm layers) and, in simulation, ``spec`` (the federation file that lists each site's images).
A site knows its data from its node config: ``data`` (its own class-folder dataset, deployment) or
``partition-id`` (simulation); ``site`` (an integer) names it in the coordinator's records.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from lungct.federated.task import batch_norm_keys, folder_data, keep_local, local_train, site_data

client_app = ClientApp()

LOCAL_BN = "lungct-local-bn"
"""Key of this site's batch-norm layers in the ClientApp's persistent state (FedBN)."""


def _site_data(config, node_config):
    """(config, images, labels) of this site: its own folder, or its share of the simulation data."""
    if "data" in node_config:
        return folder_data(str(config["train-config"]), str(node_config["data"]))
    return site_data(str(config["spec"]), int(node_config.get("partition-id", 0)))


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One local round: global weights in, this site's weights and its slice count out."""
    config = msg.content["config"]
    node = context.node_config
    site = int(node.get("site", node.get("partition-id", 0)))
    cfg, images, labels = _site_data(config, node)
    start = msg.content["arrays"].to_torch_state_dict()
    fedbn = bool(config.get("fedbn", False))
    if fedbn:
        keys = batch_norm_keys(cfg.model)
        mine = context.state.array_records.get(LOCAL_BN)
        start = keep_local(start, mine.to_torch_state_dict() if mine is not None else None, keys)
    state, info = local_train(
        cfg, start, images, labels, int(config["local-epochs"]), float(config.get("proximal-mu", 0.0))
    )
    if fedbn:
        context.state[LOCAL_BN] = ArrayRecord({k: v for k, v in state.items() if k in keys})
    metrics = MetricRecord(
        {"num-examples": info["n"], "unit-weight": 1, "train_loss": info["train_loss"], "site": site}
    )
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)
