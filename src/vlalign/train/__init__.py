"""The one training engine under SAIL, UTA and fine-tuning (see ``loop.py``)."""
