"""fedglioma: federated multi-task deep learning on preoperative glioma MRI.

The package holds all the logic of the Snakemake workflow; rules and the
``fedglioma`` command line are thin entries into it.
"""

__version__ = "0.1.0"
