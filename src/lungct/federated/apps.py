"""Flower adapters (Message API): a ClientApp that runs :func:`lungct.federated.task.local_train` on its
own site's slices and sends back only weights, and a ServerApp whose strategy (FedAvg or FedProx)
aggregates them. The same apps run in Flower's simulation engine and in a SuperLink/SuperNode
deployment.

Run settings travel in the training message's ConfigRecord: ``spec`` (the federation file),
``local-epochs`` and, for FedProx, ``proximal-mu``. A client knows its site from its node config
(``partition-id`` in simulation, ``site`` in a deployment).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from lungct.federated.task import local_train, site_data

client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One local round: global weights in, this site's weights and its example count out."""
    config = msg.content["config"]
    site = int(context.node_config.get("site", context.node_config.get("partition-id", 0)))
    cfg, images, labels = site_data(str(config["spec"]), site)
    state, info = local_train(
        cfg,
        msg.content["arrays"].to_torch_state_dict(),
        images,
        labels,
        int(config["local-epochs"]),
        float(config.get("proximal-mu", 0.0)),
    )
    metrics = MetricRecord({"num-examples": info["n"], "train_loss": info["train_loss"], "site": site})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)
