"""The Flower App Bundle's entry points: ``flwr run`` ships this folder to the SuperLink and the SuperNodes, which
import the apps from the ``fedglioma`` installed beside Flower (:mod:`fedglioma.federation.apps`)."""

from fedglioma.federation.apps import client, server

__all__ = ["client", "server"]
