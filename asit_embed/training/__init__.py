"""What only training needs: datasets, augmentation, objectives, the training loops and selection metrics.

Imports the inference core (:mod:`asit_embed`); nothing in the core, in ``enroll`` or in serving imports this
package, so a user who only embeds never loads it.
"""
