"""The timm tagger trainer: options (``options``), data (``data``), losses (``losses``), metrics
(``metrics``) and the loop (``train``). Its output folder is a wd-style model folder (see
tagloom.tagger.timm_model) that the interrogation path loads as a local model."""
