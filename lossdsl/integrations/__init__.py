"""Adapters to training frameworks. Each is optional: importing one needs its framework installed
(``pip install 'lossdsl[mmengine]'``); lossdsl itself never imports them."""
