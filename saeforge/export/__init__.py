"""saeforge.export: an SAE and its activations in the formats of the tools people browse SAEs with.

`export_delphi` writes Delphi's latent-activation cache; `export_neuronpedia` Neuronpedia's export tables
(features, activations, explanations). Formats and assumptions: docs/interop.md.
"""

from saeforge.export.delphi import export_delphi
from saeforge.export.neuronpedia import export_neuronpedia

__all__ = ["export_delphi", "export_neuronpedia"]
