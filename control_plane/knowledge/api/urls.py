from rest_framework.routers import SimpleRouter

from control_plane.knowledge.api.views import KnowledgeBaseViewSet, KnowledgeDocumentViewSet

router = SimpleRouter()
router.register("knowledge-bases", KnowledgeBaseViewSet, basename="knowledgebase")
router.register("knowledge-documents", KnowledgeDocumentViewSet, basename="knowledgedocument")

urlpatterns = router.urls
