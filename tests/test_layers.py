"""Layering: the store, the document readers and the package root import without torch."""

import subprocess
import sys


def test_store_documents_and_package_import_without_torch():
    code = (
        "import sys, lift_ray, lift_ray.store, lift_ray.documents, lift_ray.text, lift_ray.modes, lift_ray.config; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    # A fresh interpreter: this test process has torch loaded already.
    subprocess.run([sys.executable, "-c", code], check=True)
